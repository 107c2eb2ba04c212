"""Progressive volume distillation: every teacher -> student pair learns, the density clamp, the
active-learning pools, a student matching its teacher, property fusion and exact resume."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lab.bench.pvd import psnr_at, seconds_to_reach, summarize, timed_run
from lab.demo.volume import run_stage
from scene3d.cameras import Cameras
from scene3d.checkpoint import save_checkpoint
from scene3d.distill.volume.active import (
    HardPosePool,
    HardRayPool,
    Shell,
    ViewErrors,
    jitter_orientations,
    look_at_target,
    parse_active,
    top_samples,
)
from scene3d.distill.volume.distiller import (
    DENSITY_RANGE,
    VolumeDistillConfig,
    VolumeDistiller,
    density_residual,
    l2_norm,
    student_for,
)
from scene3d.distill.volume.edit import erase_box
from scene3d.distill.volume.gaussian_teacher import GaussianToFieldDistiller, gaussian_views
from scene3d.distill.volume.run import DistillVolumeConfig, distill_volume
from scene3d.errors import ConfigError
from scene3d.fields import FIELDS, build_field, load_field
from scene3d.fields.base import field_spec
from scene3d.gaussians import GaussianScene
from scene3d.render import OccupancyGridConfig, render_image
from scene3d.train import RunConfig, Stepper, fit
from tests._field_scenes import CENTERS, RADII
from tests._volume_scenes import SHELL, blob_grid, eval_views, psnr
from viewer.adapters.fields import load_field_checkpoint

SMALL = {  # PVD's shared head for all (the grid has none)
    "mlp": {"width": 32, "head": "pvd"},
    "tensorf": {"resolution_init": 16, "resolution_final": 24, "upsample_steps": (8,), "head": "pvd"},
    "grid": {"resolution": 20},
    "hashgrid": {"log2_table_size": 12, "n_levels": 4, "head": "pvd"},
}
FAST_OCCUPANCY = OccupancyGridConfig(resolution=16)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation (7x slower on a
    loaded 2-core machine at OMP_NUM_THREADS=2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(student: str, **overrides) -> VolumeDistillConfig:
    return VolumeDistillConfig(**{"student": student, "steps": 200, "batch_rays": 128, "n_samples": 24,
                                  "device": "cpu", "occupancy": FAST_OCCUPANCY, "epoch_views": 6, "epoch_steps": 5,
                                  **overrides})


def small_field(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_field(name, **SMALL[name])


@pytest.fixture(scope="module")
def teachers():
    """The blob scene in every architecture: the baked grid, and the others briefly distilled from it."""
    out = {"grid": blob_grid(16)}
    for name in ("mlp", "tensorf", "hashgrid"):
        distiller = VolumeDistiller(tiny_config(name, steps=40), out["grid"], SHELL, student=small_field(name))
        step = Stepper(distiller)
        while step.step < 40:
            step()
        out[name] = distiller.student
    return out


@pytest.mark.parametrize(("teacher_name", "student_name"), list(itertools.permutations(sorted(FIELDS), 2)))
def test_every_pair_distils_and_its_loss_falls(teachers, teacher_name, student_name):
    teacher = teachers[teacher_name]
    student = student_for(teacher, student_name, **SMALL[student_name])
    config = tiny_config(student_name, feature_decay=1.0)  # constant weights: a falling loss means learning
    distiller = VolumeDistiller(config, teacher, SHELL, student=student)
    step = Stepper(distiller)
    logs = [step() for _ in range(72)]  # PVD's MLP student dips in its first ~30 steps before it climbs
    losses = [log["loss"] for log in logs]
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert all(math.isfinite(v) for v in losses)
    assert last < 0.9 * first, (first, last)  # L2 norms: the squared error falls by a fifth
    gain = sum(log["psnr_vs_teacher"] for log in logs[-8:]) / 8 - sum(log["psnr_vs_teacher"] for log in logs[:8]) / 8
    assert gain > 1.0, gain


def test_density_clamp_and_truncated_exp_at_the_bounds():
    student = student_for(blob_grid(8), "mlp")
    x = torch.tensor([-50.0, -2.5, -2.0, 0.0, 7.0, 7.5, 100.0], requires_grad=True)
    sigma = student.activate(x)
    lo, hi = DENSITY_RANGE
    expected = torch.exp(x.detach().clamp(lo, hi))
    assert torch.allclose(sigma, expected)
    sigma.sum().backward()
    inside = (x.detach() > lo) & (x.detach() < hi)
    assert torch.allclose(x.grad[inside], expected[inside])
    assert (x.grad[(x.detach() < lo) | (x.detach() > hi)] == 0).all()
    # The density residual: agreeing beyond a bound is free; disagreeing counts in log space.
    teacher = torch.tensor([-9.0, -9.0, 12.0, 12.0, 3.0])
    pred = torch.tensor([-5.0, 0.0, 9.0, 5.0, 1.0], requires_grad=True)
    residual = density_residual(pred, teacher)
    assert torch.allclose(residual, torch.tensor([0.0, 2.0, 0.0, -2.0, -2.0]))
    residual.square().sum().backward()
    assert torch.allclose(pred.grad, torch.tensor([0.0, 4.0, 0.0, -4.0, -4.0]))
    # The raw truncated exp keeps a bounded gradient far beyond the clamp.
    free = build_field("mlp")
    y = torch.tensor([200.0], requires_grad=True)
    free.activate(y).sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.item() == pytest.approx(math.exp(15.0), rel=1e-4)


def test_a_level_loss_has_a_unit_gradient_whatever_its_point_count():
    """PVD's L2-norm losses: the level weights set the balance between levels, not the point counts."""
    for count in (10, 10_000):
        residual = torch.randn(count, 3, generator=torch.Generator().manual_seed(count)).requires_grad_()
        loss = l2_norm(residual)
        assert loss.item() == pytest.approx(residual.detach().square().sum().sqrt().item(), rel=1e-5)
        loss.backward()
        assert torch.linalg.vector_norm(residual.grad).item() == pytest.approx(1.0, rel=1e-5)
    zero = torch.zeros(5, requires_grad=True)
    l2_norm(zero).backward()
    assert (zero.grad == 0).all()  # a perfect match gives no gradient, not NaN


def test_hard_pose_pool_collects_after_epoch_3_and_replays_jittered_poses_once_full():
    n = 20
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, 0, 3] = torch.arange(n).float()  # pose i sits at x = i
    errors = ViewErrors(n)
    view = torch.arange(n).repeat_interleave(10)
    sq = torch.full((n * 10,), 1e-3)
    sq[view == 13], sq[view == 4] = 0.1, 0.05  # the two worst: 13 (10 dB), then 4
    errors.add(torch.cat([view, torch.tensor([-1])]), torch.cat([sq, torch.tensor([9.0])]))  # -1: a pooled ray
    psnr = errors.psnr()
    pool, gen = HardPosePool(fraction=0.1, capacity=3, start_epoch=3), torch.Generator().manual_seed(0)
    fresh = torch.eye(4).repeat(n, 1, 1) * 2
    for epoch in (1, 2, 3):
        assert pool.next_epoch(epoch, c2w, psnr, fresh, gen) is fresh and len(pool) == 0
    assert pool.next_epoch(4, c2w, psnr, fresh, gen) is fresh  # not full yet: fresh poses only
    assert pool.c2w[:, 0, 3].long().tolist() == [13, 4] and not pool.full
    pool.next_epoch(5, c2w, psnr, fresh, gen)
    assert len(pool) == 4 and pool.full                       # more than 3 poses
    before = pool.c2w.clone()
    out = pool.next_epoch(6, c2w, psnr, fresh, gen)
    replayed = [i for i in range(n) if not torch.equal(out[i], fresh[i])]
    assert len(replayed) == 2 and len(pool) == 4              # 10% of the epoch replaced; the pool keeps its size
    for i in replayed:                                        # each a pooled pose, turned in place
        source = min(range(4), key=lambda j: (before[j, :3, 3] - out[i, :3, 3]).norm().item())
        assert torch.allclose(out[i, :3, 3], before[source, :3, 3])
        assert not torch.allclose(out[i, :3, :3], before[source, :3, :3])
    assert sorted(pool.c2w[:, 0, 3].long().tolist()).count(13) >= 1


def test_jitter_turns_each_axis_by_at_most_pi_over_20():
    c2w = torch.eye(4).repeat(500, 1, 1)
    c2w[:, :3, 3] = torch.randn(500, 3)
    out = jitter_orientations(c2w, math.pi / 20, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :3, 3], c2w[:, :3, 3])
    rot = out[:, :3, :3]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(500, 3, 3), atol=1e-5)
    angle = torch.acos(((rot.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1))
    assert angle.max() <= math.sqrt(3) * math.pi / 20 + 1e-4 and angle.max() > math.pi / 20  # three axes at once


def test_hard_ray_pool_fills_then_replaces_the_slots_it_lent():
    pool = HardRayPool(capacity=6)
    origins, dirs = torch.randn(30, 3), torch.randn(30, 3)
    l1 = torch.rand(30) * 0.1
    l1[[3, 17, 21]] = torch.tensor([0.9, 0.8, 0.7])
    assert pool.draw(3) is None
    pool.update(origins, dirs, l1, n_hard=3)
    assert torch.equal(pool.origins, origins[[3, 17, 21]]) and not pool.full
    pool.update(origins + 1, dirs, l1, n_hard=3)
    assert pool.full and len(pool) == 6
    drawn = pool.draw(3, torch.Generator().manual_seed(0))
    assert len(set(drawn.tolist())) == 3
    pool.update(origins + 5, dirs, l1, n_hard=3, drawn=drawn)
    assert len(pool) == 6 and torch.equal(pool.origins[drawn], origins[[3, 17, 21]] + 5)


def test_point_level_keeps_the_top_30_percent_of_marched_samples_on_opaque_rays_only():
    weights = torch.zeros(3, 10)
    weights[0, [2, 5, 7, 8]] = torch.tensor([0.2, 0.5, 0.1, 0.05])
    weights[0, [0, 1, 3, 4, 6, 9]] = 0.01                     # opacity 0.91, 10 marched: the top 4
    weights[1] = 0.02                                         # opacity 0.2: no sample at all
    weights[2, [1, 2]] = torch.tensor([0.3, 0.4])             # 5 marched samples: the top 2
    marched = torch.ones(3, 10, dtype=torch.bool)
    marched[2] = False
    marched[2, :5] = True
    mask = top_samples(weights, weights.sum(-1) * torch.tensor([1.0, 1.0, 2.0]), marched)
    assert mask[0].nonzero()[:, 0].tolist() == [2, 5, 7, 8]
    assert not mask[1].any()
    assert mask[2].nonzero()[:, 0].tolist() == [1, 2]
    assert parse_active("image, ray") == {"image", "ray"}
    with pytest.raises(ValueError, match="unknown active"):
        parse_active("image,pixel")


def test_distiller_feeds_the_full_ray_pool_and_queries_the_teacher_at_the_student_points():
    config = tiny_config("hashgrid", active="ray,point", ray_pool=40)
    distiller = VolumeDistiller(config, blob_grid(16), SHELL, student=small_field("hashgrid"))
    step = Stepper(distiller)
    n_hard = int(0.1 * config.batch_rays)
    for k in range(1, 5):
        step()
        assert len(distiller.ray_pool) == min(k * n_hard, 4 * n_hard)
    assert distiller.ray_pool.full
    rays, view, drawn = distiller.sample_rays()
    assert len(rays) == config.batch_rays + n_hard and (view[-n_hard:] == -1).all() and len(drawn) == n_hard
    out_t, out_s, teacher, student = distiller.render_pair(rays)
    assert torch.equal(teacher.record["points"], student.record["points"])
    assert torch.equal(out_t["background"], out_s["background"]) and torch.equal(out_t["t"], out_s["t"])
    assert not out_t["rgb"].requires_grad and out_s["rgb"].requires_grad
    # The pool scales with the run: 150 batches in the authors' 30k steps.
    assert VolumeDistillConfig(batch_rays=1000, steps=3000).ray_pool_capacity() == 15000
    assert VolumeDistillConfig(epoch_views=345).hard_pose_capacity() == 100


def test_the_student_inherits_its_teachers_shared_decoders_and_matches_its_interface(teachers):
    teacher = teachers["hashgrid"]
    distiller = VolumeDistiller(tiny_config("mlp"), teacher, SHELL)
    student = distiller.student
    assert student.config.head == "pvd" and student.config.code_dim == teacher.encoding.out_dim
    assert sorted(distiller.inherited) == sorted(k for k in teacher.state_dict() if k.startswith("head."))
    for name in distiller.inherited:
        assert torch.equal(student.state_dict()[name], teacher.state_dict()[name])
    assert distiller.has_feature_level() and distiller.level_weights(0)["feature"] > 0
    x = torch.rand(64, 3) * 2 - 1
    feature = teacher.interface(teacher.embed(x))
    assert feature.shape == (64, 16) and feature[:, 0].min() >= -2 and feature[:, 0].max() <= 7
    assert torch.equal(teacher.decode_density(teacher.embed(x)), feature[:, 0])
    # TensoRF has no sigma_net: an MLP student takes its color_net only; the grid has nothing to give.
    assert sorted(VolumeDistiller(tiny_config("mlp"), teachers["tensorf"], SHELL).inherited) == [
        "head.color_net.0.weight", "head.color_net.2.weight", "head.color_net.4.weight"]
    plain = VolumeDistiller(tiny_config("mlp", inherit=False, student_lr=0.02), teacher, SHELL)
    assert plain.inherited == [] and plain.student.config.lr == 0.02
    # A pair with the grid has no feature level; PVD's staged schedule then starts at its second stage.
    staged = VolumeDistiller(tiny_config("hashgrid", schedule="staged"), teachers["grid"], SHELL,
                             student=small_field("hashgrid"))
    assert not staged.has_feature_level() and staged.inherited == []
    assert staged.level_weights(0) == {"feature": 0.0, "density": 0.002, "color": 0.002, "rgb": 0.0}
    adapter = VolumeDistiller(tiny_config("mlp", feature_level="adapter"), teacher, SHELL)
    assert adapter.student.config.head == "native" and adapter.has_feature_level()


def test_both_fields_render_over_the_views_background_unless_random_backgrounds_are_asked_for():
    config = tiny_config("mlp")
    distiller = VolumeDistiller(config, blob_grid(16), SHELL, student=small_field("mlp"))
    rays, _, _ = distiller.sample_rays()
    out_t, out_s, _, _ = distiller.render_pair(rays)
    white = torch.ones(len(rays), 3)
    assert torch.equal(out_t["background"], white) and torch.equal(out_s["background"], white)
    random = VolumeDistiller(tiny_config("mlp", random_background=True), blob_grid(16), SHELL,
                             student=small_field("mlp"))
    assert random.render_pair(rays)[0]["background"].std() > 0.1


def test_shell_covers_the_training_cameras():
    cams = SHELL.sample(64, torch.Generator().manual_seed(0))
    assert torch.allclose(look_at_target(cams), torch.zeros(3), atol=1e-4)
    shell = Shell.from_cameras(cams)
    assert SHELL.radius[0] <= shell.radius[0] < shell.radius[1] <= SHELL.radius[1] + 1e-4
    assert SHELL.elevation_deg[0] - 1e-3 <= shell.elevation_deg[0] < shell.elevation_deg[1] <= 45.0 + 1e-3
    assert shell.fov_x_deg == pytest.approx(45.0) and shell.width == 16



def test_the_shell_is_the_same_every_time_it_is_measured():
    """CPU `lstsq` gave 4 different last bits in 300 solves of one system (a resumed splat distillation
    then drew other cameras than the uninterrupted run): the target must be the same every time."""
    cams = SHELL.sample(16, torch.Generator().manual_seed(1))
    held = []  # allocations of varied sizes in between, as a training run makes
    targets = set()
    for size in torch.randint(1, 64, (300,), generator=torch.Generator().manual_seed(0)).tolist():
        targets.add(tuple(look_at_target(cams).tolist()))
        held.append(torch.empty(size))
    assert len(targets) == 1


def test_cameras_on_one_axis_look_at_its_point_nearest_the_origin():
    """All optical axes parallel (rank-deficient normal equations): the minimum-norm point on them."""
    c2w = torch.eye(4).repeat(3, 1, 1)
    c2w[:, :3, 3] = torch.tensor([[1.0, 2.0, -5.0], [1.0, 2.0, -3.0], [1.0, 2.0, 4.0]])
    cams = Cameras.from_fov(c2w, 1.0, 8, 8)
    assert torch.allclose(look_at_target(cams), torch.tensor([1.0, 2.0, 0.0]), atol=1e-5)

def test_distilled_student_matches_its_teacher():
    teacher = blob_grid(24)
    torch.manual_seed(0)
    config = tiny_config("hashgrid", steps=150, batch_rays=256, n_samples=32, schedule="all_at_once")
    distiller = VolumeDistiller(config, teacher, SHELL, eval_views(), student=small_field("hashgrid"))
    before, _ = distiller.evaluate()
    fit(distiller, None, RunConfig(eval_every=0, progress=False), config.steps)
    after, _ = distiller.evaluate()
    assert after["psnr_vs_teacher"] > 26.0 > before["psnr_vs_teacher"] + 8, (before, after)
    assert after["ssim_vs_teacher"] > 0.9


def test_property_fusion_carries_an_erased_region_into_the_student():
    center, radius = CENTERS[1], RADII[1].item()
    lo, hi = (center - radius - 0.05).tolist(), (center + radius + 0.05).tolist()
    edited = erase_box(blob_grid(24), lo, hi)
    torch.manual_seed(0)
    config = tiny_config("hashgrid", steps=120, batch_rays=256, n_samples=32)
    distiller = VolumeDistiller(config, edited, SHELL, eval_views(), student=small_field("hashgrid"))
    fit(distiller, None, RunConfig(eval_every=0, progress=False), config.steps)
    student = distiller.student.eval()
    with torch.no_grad():
        kept = student.density(CENTERS[0] + 0.1 * torch.randn(64, 3) * RADII[0]).mean()
        erased = student.density(center + 0.1 * torch.randn(64, 3) * radius).mean()
    assert erased < 1.0 and kept > 4 * erased, (kept, erased)
    cameras, white = eval_views(1).cameras, torch.ones(3)
    render = render_image(student, cameras, 32, background=white, occupancy=distiller.occupancy)["rgb"]
    target = render_image(edited, cameras, 32, background=white)["rgb"]
    original = render_image(blob_grid(24), cameras, 32, background=white)["rgb"]
    assert psnr(render, target) > psnr(render, original) + 5.0  # the student renders the edit


def write_teacher(path: Path) -> Path:
    """A teacher checkpoint whose fit config names a 16 px synthetic world (cameras and ground truth)."""
    teacher = blob_grid(16)
    fit = {"data": None, "world_seed": 0, "n_train_views": 4, "n_test_views": 2, "image_size": 16}
    return save_checkpoint(path, {"field": teacher.state_dict()}, {**field_spec(teacher), "fit": fit})


def run_config(tmp_path: Path, teacher: Path, name: str, steps: int) -> DistillVolumeConfig:
    return DistillVolumeConfig(teacher=teacher, student="mlp", steps=steps, batch_rays=64, n_samples=16, device="cpu",
                               occupancy=FAST_OCCUPANCY, epoch_views=4, epoch_steps=3, eval_views=1,
                               run=RunConfig(name=name, output_root=tmp_path, eval_every=4, checkpoint_every=4,
                                             progress=False))


def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    teacher = write_teacher(tmp_path / "teacher.safetensors")
    torch.manual_seed(0)
    _, full = distill_volume(run_config(tmp_path, teacher, "full", 10))
    loss = VolumeDistiller.loss

    def interrupted(self, step):
        if step == 7:  # after the checkpoint of step 4 and two more steps
            raise KeyboardInterrupt
        return loss(self, step)

    monkeypatch.setattr(VolumeDistiller, "loss", interrupted)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        distill_volume(run_config(tmp_path, teacher, "split", 10))
    monkeypatch.setattr(VolumeDistiller, "loss", loss)
    torch.manual_seed(99)  # resuming restores every RNG, whatever the state before
    _, resumed = distill_volume(run_config(tmp_path, teacher, "split", 10))
    a = load_field(tmp_path / "distill" / "full" / "student.safetensors").state_dict()
    b = load_field(tmp_path / "distill" / "split" / "student.safetensors").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["steps"] == full["steps"] == 10 and "test_psnr" in full and "teacher_test_psnr" in full
    run = tmp_path / "distill" / "full"
    assert (run / "renders" / "test_000.png").is_file() and (run / "metrics.json").is_file()
    assert list((run / "tb").iterdir())
    # A distillation run is itself a teacher: its latest checkpoint loads as a field; the viewer loads
    # it with the teacher's occupancy grid it was trained and evaluated with.
    latest = sorted((run / "checkpoints").glob("*.safetensors"))[-1]
    assert load_field(latest).name == "mlp"
    field, occupancy, _ = load_field_checkpoint(latest)
    assert field.name == "mlp" and occupancy is not None and 0 < occupancy.occupied_fraction < 1


def test_script_reports_a_missing_teacher_in_one_line(tmp_path):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "scripts" / "distill_volume.py"), "--teacher",
                           str(tmp_path / "nope"), "--output-root", str(tmp_path)],
                          capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(ConfigError, match="--student: must be one of .*; got 'voxels'"):
        VolumeDistillConfig(student="voxels")
    with pytest.raises(ConfigError, match="--active: unknown"):
        VolumeDistillConfig(active="image,pixels")


def test_bench_summary_times_and_equal_time_psnr_over_seeds():
    scratch = [{"seconds": 0.0, "test_psnr": 10.0}, {"seconds": 10.0, "test_psnr": 18.0},
               {"seconds": 20.0, "test_psnr": 20.0}]
    fast = [{"seconds": 0.0, "test_psnr": 10.0}, {"seconds": 4.0, "test_psnr": 20.0},
            {"seconds": 20.0, "test_psnr": 22.0}]
    slow = [{"seconds": 0.0, "test_psnr": 10.0}, {"seconds": 20.0, "test_psnr": 19.0}]
    assert seconds_to_reach(fast, 20.0) == 4.0 and seconds_to_reach(slow, 20.0) is None
    assert seconds_to_reach(fast, 15.0) == 2.0 and seconds_to_reach(fast, 21.0) == 12.0  # interpolated
    assert psnr_at(scratch, 15.0) == 18.0
    one = {"scratch": {"timeline": scratch}, "pvd": {"timeline": fast}, "pvd_al": {"timeline": slow}}
    faster = {**one, "pvd": {"timeline": [{"seconds": 0.0, "test_psnr": 10.0}, {"seconds": 1.0, "test_psnr": 17.0},
                                          {"seconds": 2.0, "test_psnr": 24.0}]}}
    s = summarize({0: one, 1: faster})
    assert s["seeds"] == [0, 1]
    assert s["pvd"]["speedup_to_scratch_final"]["per_seed"] == [5.0, pytest.approx(20 / (1 + 3 / 7), abs=0.01)]
    assert s["pvd"]["gain_over_scratch_db"]["per_seed"] == [2.0, 4.0]
    assert s["pvd"]["psnr_at_scratch_time"]["per_seed"] == [22.0, 24.0]
    assert s["pvd_al"]["speedup_to_scratch_final"]["mean"] is None  # a seed never reached it: no mean
    totals, psnrs = [], iter(range(100))
    timeline = timed_run(lambda: None, totals.append, lambda: float(next(psnrs)), budget=0.01, eval_every=1e9)
    assert timeline[0]["steps"] == 1 and timeline[-1]["steps"] >= 1 and len(timeline) == 2


def test_bench_methods_set_schedule_active_levels_inheritance_and_budget(monkeypatch):
    from types import SimpleNamespace

    import lab.bench.pvd as bench

    made, budgets = {}, []

    class FakeDistiller:
        def __init__(self, config, teacher, shell, views):
            self.config, self.student = config, SimpleNamespace(parameter_count=lambda: 1)
            self.inherited, self.loss = ["head.x"] if config.inherit else [], lambda step: (torch.zeros(()), {})

        def has_feature_level(self):
            return True

        def evaluate(self):
            return {"psnr_vs_teacher": 1.0, "teacher_test_psnr": 2.0, "test_psnr": 3.0}, {}

    monkeypatch.setattr(bench, "VolumeDistiller", FakeDistiller)
    monkeypatch.setattr(bench, "Shell", SimpleNamespace(from_cameras=lambda cameras: None))
    monkeypatch.setattr(bench, "EvalViews", lambda *args, **kwargs: None)
    monkeypatch.setattr(bench, "timed_run", lambda step, total, evaluate, budget, every: budgets.append(budget) or [])
    data = SimpleNamespace(cameras=None, background=torch.zeros(3), images=None)
    config = bench.PVDBenchConfig(student_seconds=60, al_levels="point")
    for method in ("pvd", "pvd_al", "pvd_al_no_inherit", "pvd_al_adapter"):
        made[method] = bench.run_method(config, method, 1, None, "grid", data, data)
    assert [(made[m]["schedule"], made[m]["active"], made[m]["inherited_tensors"], made[m]["feature_level"])
            for m in made] == [("staged", "", 1, "interface"), ("all_at_once", "point", 1, "interface"),
                               ("all_at_once", "point", 0, "interface"), ("all_at_once", "point", 1, "adapter")]
    assert budgets == [60, 60, 60, 60]


def test_bench_reuses_runs_of_an_earlier_json_and_skips_the_teacher_for_scratch(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    import lab.bench.pvd as bench

    made = []

    def fake_run(config, method, seed, teacher, student, train, test):
        made.append((method, seed, teacher))
        psnr = {"scratch": 20.0, "pvd": 22.0, "pvd_al": 23.0}[method] + seed
        return {"timeline": [{"seconds": 0.0, "test_psnr": 10.0}, {"seconds": 5.0, "test_psnr": psnr}],
                "teacher_test_psnr": 25.0}

    monkeypatch.setattr(bench, "load_data", lambda config: (SimpleNamespace(width=8), SimpleNamespace(cameras=[0])))
    monkeypatch.setattr(bench, "run_method", fake_run)
    monkeypatch.setattr(bench, "get_teacher", lambda *args: ("teacher", {"source": "fake"}))
    monkeypatch.setattr(bench, "plot", lambda results, path: path)
    first = bench.PVDBenchConfig(pairs=("hashgrid:mlp",), methods=("scratch",), seeds=(0, 1), out=tmp_path / "a.json")
    bench.run_bench(first)
    assert made == [("scratch", 0, None), ("scratch", 1, None)]
    assert "summary" not in json.loads(first.out.read_text())["pairs"]["hashgrid:mlp"]
    second = bench.PVDBenchConfig(pairs=("hashgrid:mlp",), seeds=(0, 1), reuse=(first.out,), out=tmp_path / "b.json")
    results = bench.run_bench(second)
    pair = results["pairs"]["hashgrid:mlp"]
    assert made[2:] == [(m, seed, "teacher") for seed in (0, 1) for m in ("pvd", "pvd_al")]
    assert results["seeds"] == [0, 1] and list(pair["runs"]) == ["0", "1"] and pair["teacher"]["test_psnr"] == 25.0
    summary = pair["summary"]
    assert summary["seeds"] == [0, 1] and summary["pvd_al"]["gain_over_scratch_db"]["mean"] == 3.0
    assert summary["pvd"]["final_psnr"] == {"mean": 22.5, "std": 0.5, "per_seed": [22.0, 23.0]}
    with pytest.raises(ConfigError, match="--methods: must be one of .*; got 'pvd-al'"):
        bench.PVDBenchConfig(methods=("scratch", "pvd-al"), out=tmp_path / "c.json")


@pytest.mark.slow
def test_demo_stage_converts_a_fitted_field(tmp_path):
    metrics = run_stage(tmp_path, quick=True)
    assert metrics["psnr_vs_teacher"] > 15.0 and metrics["steps"] == 100
    assert Path(metrics["student_checkpoint"]).is_file() and list(Path(metrics["renders"]).glob("*.png"))
    assert load_field(metrics["student_checkpoint"]).name == metrics["student"]


def test_a_gaussian_scene_teaches_a_field_through_its_renders():
    torch.manual_seed(0)
    points = torch.cat([CENTERS[i] + 0.5 * RADII[i] * torch.randn(150, 3) for i in range(2)])
    colors = torch.cat([torch.tensor([[0.9, 0.2, 0.1]]).expand(150, 3), torch.tensor([[0.1, 0.4, 0.9]]).expand(150, 3)])
    scene = GaussianScene.from_points(points, colors, sh_degree=0, opacity=0.8)
    student = student_for(blob_grid(8), "hashgrid", **SMALL["hashgrid"])
    distiller = GaussianToFieldDistiller(scene, student, SHELL, batch_rays=256, n_samples=32, epoch_views=6,
                                         epoch_steps=10, steps=120)
    views = eval_views()
    teacher_rgb, alpha = gaussian_views(scene, views.cameras)
    teacher_rgb = teacher_rgb + (1 - alpha[..., None])  # over white

    def score() -> float:
        return psnr(render_image(student.eval(), views.cameras, 32, background=torch.ones(3))["rgb"], teacher_rgb)

    before = score()
    fit(distiller, None, RunConfig(eval_every=0, progress=False), 120)
    after = score()
    assert after > before + 5 and after > 16.0, (before, after)
