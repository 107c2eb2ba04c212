import importlib.util
from pathlib import Path

import pytest
import torch

from scene3d.gaussians.ply import read_ply
from scene3d.gaussians.strategy import DensifyStrategy
from scene3d.gaussians.train import PRESETS, FitConfig, fit, seconds_to_psnr
from scene3d.runs import RunDir


def _cfg(tmp_path, name, steps=20, **kw):
    return FitConfig(name=name, output_root=tmp_path, steps=steps, n_init=300, world_views=(8, 1, 2), world_size=24,
                     densify=DensifyStrategy(refine_start=4, refine_stop=18, refine_every=4, reset_every=15),
                     eval_every=10, checkpoint_every=10, turntable_frames=3, progress=False, export_mesh=False, **kw)


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
    # the PSNR history (step 10 from before the interruption, step 20 after) survives the resume
    assert [(h["step"], h["psnr"]) for h in resumed["history"]] == [(h["step"], h["psnr"]) for h in straight["history"]]
    assert [h["step"] for h in straight["history"]] == [10, 20]
    assert straight["history"][-1]["psnr"] == straight["test_psnr"]
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


def test_seconds_to_psnr_takes_the_first_evaluation_at_or_above_each_mark():
    history = [{"seconds": 10.0, "psnr": 24.0}, {"seconds": 20.0, "psnr": 26.5}, {"seconds": 30.0, "psnr": 25.5},
               {"seconds": 40.0, "psnr": 28.0}]
    assert seconds_to_psnr(history, (25.0, 28.0, 30.0)) == {"25": 20.0, "28": 40.0, "30": None}


def _fit_splats_script():
    path = Path(__file__).parents[2] / "scripts" / "fit_splats.py"
    spec = importlib.util.spec_from_file_location("fit_splats", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_splats_preset_is_the_starting_point_and_flags_override_it():
    script = _fit_splats_script()
    preset = PRESETS["cpu10min"]()
    cfg = script.parse(["--preset", "cpu10min", "--steps", "7"])
    assert cfg.steps == 7 and cfg.name == preset.name and cfg.densify == preset.densify
    assert cfg.eps2d == preset.eps2d == 0.1 and script.parse(["--preset", "cpu10min", "--eps2d", "0.3"]).eps2d == 0.3
    assert script.parse([]) == FitConfig()
    with pytest.raises(SystemExit):
        script.parse(["--preset", "nonexistent"])
