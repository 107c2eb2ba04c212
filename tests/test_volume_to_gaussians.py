"""A field teacher distilled into a Gaussian scene through its renders: the student approaches the
teacher's renders, the Gaussians start on the teacher's surface, no ground truth is read, and resume
from a checkpoint is exact."""

from __future__ import annotations

import json

import pytest
import torch

from scene3d.checkpoint import load_checkpoint, save_checkpoint
from scene3d.distill.volume.distiller import EvalViews
from scene3d.distill.volume.gaussian_student import (
    FieldToGaussianDistiller,
    GaussianStudentConfig,
    GaussianStudentOptions,
)
from scene3d.distill.volume.run import DistillVolumeConfig, distill_volume
from scene3d.errors import NonFiniteError
from scene3d.gaussians.ply import read_ply
from scene3d.gaussians.strategy import DensifyStrategy
from scene3d.render import OccupancyGridConfig
from scene3d.train import RunConfig, Stepper
from tests._volume_scenes import SHELL, blob_grid, eval_views
from tests.test_volume_distill import write_teacher


def _config(**kw) -> GaussianStudentConfig:
    densify = DensifyStrategy(refine_start=10**9, refine_stop=10**9, reset_every=10**9)  # off unless given
    return GaussianStudentConfig(**{"steps": 40, "epoch_views": 6, "epoch_steps": 20, "n_samples": 32, "n_init": 300,
                                 "sh_degree": 0, "use_occupancy": False, "densify": densify, **kw})


def test_student_approaches_teacher_renders():
    teacher = blob_grid()
    distiller = FieldToGaussianDistiller(_config(n_init=1000), teacher, SHELL, eval_views())
    before = distiller.evaluate()[0]["psnr_vs_teacher"]
    step = Stepper(distiller)
    for _ in range(40):
        step()
    after = distiller.evaluate()[0]["psnr_vs_teacher"]
    assert after > before + 4.0, (before, after)  # measured: 18.8 -> 24.8 dB


def test_gaussians_start_on_the_teacher_surface():
    teacher = blob_grid()
    distiller = FieldToGaussianDistiller(_config(), teacher, SHELL)
    means = distiller.scene.means.detach()
    with torch.no_grad():
        sigma = teacher.density(means)
        far = teacher.density(means * 1.8)  # pushed away from the origin, off the blobs
    assert (sigma > 1.0).float().mean() > 0.8
    assert (sigma > far).float().mean() > 0.8


def test_no_ground_truth_is_read():
    """Garbage ground truth changes the test PSNR against it but not a single trained parameter."""
    runs = []
    for gt in (None, torch.rand(3, 16, 16, 3)):
        views = eval_views()
        views = EvalViews(views.cameras, views.background, ground_truth=gt)
        distiller = FieldToGaussianDistiller(_config(), blob_grid(), SHELL, views)
        step = Stepper(distiller)
        for _ in range(5):
            step()
        runs.append((distiller.scene.means.detach().clone(), distiller.evaluate()[0]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert "test_psnr" not in runs[0][1] and runs[1][1]["test_psnr"] < runs[1][1]["psnr_vs_teacher"]


def test_a_nan_loss_stops_or_skips_the_step(monkeypatch):
    monkeypatch.setenv("SCENE3D_FAULT_NAN_STEP", "3")
    stopping = Stepper(FieldToGaussianDistiller(_config(), blob_grid(), SHELL))
    stopping(), stopping()
    with pytest.raises(NonFiniteError, match="step 3"):
        stopping()
    distiller = FieldToGaussianDistiller(_config(), blob_grid(), SHELL)
    skipping = Stepper(distiller, nonfinite="skip")
    skipping(), skipping()
    before = {k: v.detach().clone() for k, v in distiller.scene.params.items()}
    skipping()
    assert all(torch.equal(before[k], v) for k, v in distiller.scene.params.items())  # no update at the NaN
    skipping()
    assert skipping.guard.skipped == [3] and not torch.equal(before["means"], distiller.scene.means)


def test_resume_is_exact(tmp_path):
    """Interrupted at step 15 (through a checkpoint file) and resumed across an epoch boundary and a
    densification: the same scene, bit for bit, as an uninterrupted run."""
    cfg = _config(densify=DensifyStrategy(refine_start=10, refine_stop=30, refine_every=10, reset_every=10**9),
                  epoch_steps=10)
    teacher = blob_grid()
    full = FieldToGaussianDistiller(cfg, teacher, SHELL)
    step = Stepper(full)
    for _ in range(25):
        step()
    part = FieldToGaussianDistiller(cfg, teacher, SHELL)
    step = Stepper(part)
    for _ in range(15):
        step()
    path = save_checkpoint(tmp_path / "ckpt.safetensors", part.state_dict())
    for _ in range(3):  # run on, then restore: the restored state must not depend on what came after
        step()
    resumed = FieldToGaussianDistiller(cfg, teacher, SHELL)
    resumed.load_state_dict(load_checkpoint(path)[0], path)
    step = Stepper(resumed, step=15)
    for _ in range(10):
        step()
    assert len(resumed.scene) == len(full.scene) > cfg.n_init
    for name, p in full.scene.params.items():
        assert torch.equal(p, resumed.scene.params[name]), name


def _run_config(tmp_path, teacher, name: str) -> DistillVolumeConfig:
    splats = GaussianStudentOptions(n_init=200, sh_degree=0,
                                densify=DensifyStrategy(refine_start=3, refine_stop=9, refine_every=3,
                                                        reset_every=10**9))
    return DistillVolumeConfig(teacher=teacher, student="splats", steps=10, n_samples=16,
                               occupancy=OccupancyGridConfig(resolution=16), epoch_views=4, epoch_steps=3,
                               eval_views=1, splats=splats,
                               run=RunConfig(name=name, output_root=tmp_path, eval_every=4, checkpoint_every=4,
                                             progress=False))


def test_script_run_resumes_exactly_and_writes_its_outputs(tmp_path, monkeypatch):
    """`--student splats`: interrupted after the step-4 checkpoint and two more steps, then resumed,
    the run ends with the same scene as an uninterrupted one; metrics, grid and PLY are written."""
    teacher = write_teacher(tmp_path / "teacher.safetensors")
    _, full = distill_volume(_run_config(tmp_path, teacher, "full"))
    loss = FieldToGaussianDistiller.loss

    def interrupted(self, step):
        if step == 7:
            raise KeyboardInterrupt
        return loss(self, step)

    monkeypatch.setattr(FieldToGaussianDistiller, "loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill_volume(_run_config(tmp_path, teacher, "split"))
    calls = []

    def counted(self, step):
        calls.append(step)
        return loss(self, step)

    monkeypatch.setattr(FieldToGaussianDistiller, "loss", counted)
    torch.manual_seed(99)  # the run's RNGs are its own
    _, resumed = distill_volume(_run_config(tmp_path, teacher, "split"))
    assert calls == list(range(5, 11))  # it went on from the step-4 checkpoint
    a, b = (read_ply(tmp_path / "distill" / name / "scene.ply") for name in ("full", "split"))
    assert len(a) == len(b) == full["num_gaussians"] > 200 and torch.equal(a.means, b.means)  # densified
    assert resumed["steps"] == full["steps"] == 10
    assert {"psnr_vs_teacher", "test_psnr", "teacher_test_psnr"} <= full.keys()
    run = tmp_path / "distill" / "full"
    assert (run / "renders" / "test_grid.png").is_file()
    assert json.loads((run / "metrics.json").read_text())["student"] == "splats"
