"""3D students of score distillation: every registered field and the Gaussian scene render,
train a few steps with every guidance, and a short SDS run lowers an exact prior's denoising loss
on their renders."""

import math

import pytest
import torch

from scene3d.diffusion import PixelPrior, PixelPriorConfig
from scene3d.distill.score.distiller import DistillConfig, ScoreDistiller
from scene3d.distill.score.guidance import GUIDANCES, make_guidance
from scene3d.distill.score.targets import (
    TARGETS,
    FieldTargetConfig,
    SplatTargetConfig,
    TargetOptions,
    build_target,
    field_student,
    splat_student,
)
from scene3d.distill.score.views import orbit_views, random_cameras
from scene3d.fields import FIELDS
from scene3d.train import Stepper
from tests._score_priors import GaussianPrior

TINY = PixelPriorConfig(resolution=16, block_out_channels=(8, 16), norm_num_groups=4, attention=False)
FAST = TargetOptions(field=FieldTargetConfig(samples=12, mesh_views=4, mesh_size=16),
                     splats=SplatTargetConfig(n_gaussians=300))


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    return PixelPrior(TINY).freeze()


def _distill(prior, guidance, target, config: DistillConfig) -> list[dict[str, float]]:
    """`config.steps` guarded steps of one target; each step's scalars."""
    stepper = Stepper(ScoreDistiller(prior, guidance, [target], config))
    return [stepper() for _ in range(config.steps)]


def test_initial_students_show_a_grey_object_on_white():
    cams = orbit_views(2, 16)
    for name in ("field", "splats"):
        images = build_target(name, 0, FAST).render(cams)
        assert images.shape == (2, 3, 16, 16)
        assert torch.allclose(images[:, :, 0, 0], torch.ones(2, 3), atol=0.02), name  # corners: background
        centre = images[:, :, 6:10, 6:10]
        assert (centre.mean((1, 2, 3)) < 0.8).all(), name  # the blob / ball of Gaussians in the middle
        assert (centre.amax(1) - centre.amin(1)).mean() < 0.15, name  # grey-ish


@pytest.mark.parametrize("target", ["field", "splats"])
@pytest.mark.parametrize("guidance", sorted(GUIDANCES))
def test_each_3d_target_trains_with_each_guidance(prior, target, guidance):
    student = build_target(target, 0, FAST, guidance=guidance)
    assert (student.target.pixel_grad_clip is not None) == (target == "splats" and guidance == "tsm")
    before = [p.detach().clone() for p in student.module.parameters()]
    history = _distill(prior, make_guidance(guidance, prior, guidance_scale=3.0), student.target,
                       DistillConfig(prompt="torus", steps=2, batch_size=2, render_size=16))
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    after = list(student.module.parameters())
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("arch", sorted(FIELDS))
def test_every_registered_field_is_a_target(prior, arch):
    student = field_student(FieldTargetConfig(arch=arch, samples=12), seed=0)
    _distill(prior, make_guidance("sds", prior), student.target, DistillConfig(prompt="box", steps=2, batch_size=2,
                                                                               render_size=16))
    images = student.render(orbit_views(2, 16))
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_splats_densify_and_prune_during_distillation(prior):
    from scene3d.gaussians.strategy import DensifyStrategy

    config = SplatTargetConfig(n_gaussians=200, densify=DensifyStrategy(
        grow_grad2d=0.0, refine_start=1, refine_stop=100, refine_every=2, reset_every=10**9, max_gaussians=10**4))
    student = splat_student(config)
    _distill(prior, make_guidance("sds", prior), student.target, DistillConfig(prompt="box", steps=3, batch_size=2,
                                                                               render_size=16))
    assert len(student.module) > 200  # every visible Gaussian grew (threshold 0)
    # the optimizer follows the new parameters
    opt_params = {id(p) for g in student.target.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in opt_params for p in student.module.parameters())


def test_exports_write_a_ply_and_a_mesh(tmp_path):
    from scene3d.gaussians.ply import read_ply

    splats = build_target("splats", 0, FAST)
    files = splats.export(tmp_path)
    assert len(read_ply(files["ply"])) == len(splats.module)
    field = build_target("field", 0, FAST)
    files = field.export(tmp_path)
    assert files["mesh_triangles"] > 0 and (tmp_path / "mesh.ply").is_file()


def _gaussian_prior(size: int) -> GaussianPrior:
    """Images (in [-1, 1]) of an orange square in the middle of a white background."""
    mu = torch.ones(1, 3, size, size)
    c = slice(size // 4, size - size // 4)
    mu[:, :, c, c] = torch.tensor([0.6, 0.0, -0.4]).view(1, 3, 1, 1)
    return GaussianPrior(mu, sigma=0.1)


@pytest.mark.parametrize("target", ["field", "splats"])
def test_short_sds_run_lowers_the_denoising_loss_of_the_renders(target):
    torch.manual_seed(0)
    size = 8
    prior = _gaussian_prior(size)
    student = build_target(target, 0, FAST)
    cams, _ = random_cameras(16, size, generator=torch.Generator().manual_seed(5))

    def denoising_loss():
        with torch.no_grad():
            x0 = prior.encode(student.render(cams))
        g = torch.Generator().manual_seed(123)
        return float(prior.denoising_loss(x0.repeat(8, 1, 1, 1), prior.null_condition(128), generator=g).mean())

    before = denoising_loss()
    guidance = make_guidance("sds", prior, guidance_scale=1.0)
    # the target's own rates, no decay: this checks that the student learns, not the schedule
    _distill(prior, guidance, student.target,
             DistillConfig(steps=60, batch_size=2, render_size=size, lr_end_factor=1.0))
    assert denoising_loss() < 0.75 * before


def test_registry():
    assert {"field", "splats", "voxels", "image"} <= set(TARGETS)
    with pytest.raises(ValueError, match="choose from"):
        build_target("mesh")
    with pytest.raises(ValueError, match="registered"):
        field_student(FieldTargetConfig(arch="nope"))
