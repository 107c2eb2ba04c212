import pytest
import torch

from scene3d.gaussians.ply import read_ply
from scene3d.gaussians.strategy import DensifyStrategy
from scene3d.gaussians.train import FitConfig, fit
from scene3d.runs import RunDir


def _cfg(tmp_path, name, steps=20, **kw):
    return FitConfig(name=name, output_root=tmp_path, steps=steps, n_init=300, world_views=(8, 1, 2), world_size=24,
                     densify=DensifyStrategy(refine_start=4, refine_stop=18, refine_every=4, reset_every=15),
                     eval_every=10**9, checkpoint_every=10, turntable_frames=3, progress=False, export_mesh=False, **kw)


def test_resume_after_interruption_is_exact(tmp_path, monkeypatch):
    straight = fit(_cfg(tmp_path, "a"))
    original = RunDir.save_checkpoint

    def save_then_crash(self, step, state, config=None):
        path = original(self, step, state, config)
        if step == 10:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(tmp_path, "b"))
    monkeypatch.setattr(RunDir, "save_checkpoint", original)
    resumed = fit(_cfg(tmp_path, "b"))
    a, b = read_ply(tmp_path / "splats/a/scene.ply"), read_ply(tmp_path / "splats/b/scene.ply")
    assert len(a) == len(b) != 300  # densification happened, identically
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    assert resumed["test_psnr"] == straight["test_psnr"]
    assert (tmp_path / "splats/a/renders/test_grid.png").exists()
    assert (tmp_path / "splats/a/tb").exists()


@pytest.mark.slow
def test_fit_small_world_reaches_high_psnr(tmp_path):
    cfg = FitConfig(name="s", output_root=tmp_path, steps=1500, world_views=(40, 1, 4), world_size=48,
                    densify=DensifyStrategy(refine_start=150, refine_stop=1100, refine_every=100, reset_every=800),
                    eval_every=10**9, turntable_frames=3, progress=False)
    metrics = fit(cfg)
    assert metrics["test_psnr"] > 25.0
    assert metrics["mesh_vertices"] > 1000
