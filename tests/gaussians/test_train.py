import importlib.util
import json
from pathlib import Path

import pytest
import torch

from scene3d.gaussians.ply import read_ply
from scene3d.gaussians.strategy import DensifyStrategy
from scene3d.gaussians.train import PRESETS, FitConfig, SplatTrainer, fit_splats, load_splits
from scene3d.runs import RunDir
from scene3d.train import RunConfig


def _cfg(tmp_path, name, steps=20, **kw):
    return FitConfig(steps=steps, n_init=300, world_views=(8, 1, 2), world_size=24,
                     densify=DensifyStrategy(refine_start=4, refine_stop=18, refine_every=4, reset_every=15),
                     turntable_frames=3, export_mesh=False, **kw,
                     run=RunConfig(name=name, output_root=tmp_path, eval_every=10, checkpoint_every=10, progress=False))


def test_resume_after_interruption_is_exact(tmp_path, monkeypatch):
    _, straight = fit_splats(_cfg(tmp_path, "a"))
    original = RunDir.save_checkpoint

    def save_then_crash(self, step, state, config=None):
        path = original(self, step, state, config)
        if step == 10:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        fit_splats(_cfg(tmp_path, "b"))
    monkeypatch.setattr(RunDir, "save_checkpoint", original)
    _, resumed = fit_splats(_cfg(tmp_path, "b"))
    a, b = read_ply(tmp_path / "splats/a/scene.ply"), read_ply(tmp_path / "splats/b/scene.ply")
    assert len(a) == len(b) != 300  # densification happened, identically
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    assert resumed["test_psnr"] == straight["test_psnr"]
    # the PSNR timeline (step 10 from before the interruption, step 20 after) survives the resume
    points = [[(h["step"], h["psnr"]) for h in m["timeline"]] for m in (straight, resumed)]
    assert points[0] == points[1]
    assert [h["step"] for h in straight["timeline"]] == [10, 20]
    assert straight["timeline"][-1]["psnr"] == straight["test_psnr"]
    assert json.loads((tmp_path / "splats/a/metrics.json").read_text())["seconds_to_psnr"] == {"25": None, "28": None}
    assert (tmp_path / "splats/a/renders/test_grid.png").exists()
    assert (tmp_path / "splats/a/tb").exists()


@pytest.mark.slow
def test_fit_small_world_reaches_high_psnr(tmp_path):
    cfg = FitConfig(steps=1500, world_views=(40, 1, 4), world_size=48,
                    densify=DensifyStrategy(refine_start=150, refine_stop=1100, refine_every=100, reset_every=800),
                    turntable_frames=3, run=RunConfig(name="s", output_root=tmp_path, eval_every=10**9, progress=False))
    _, metrics = fit_splats(cfg)
    assert metrics["test_psnr"] > 25.0
    assert metrics["mesh_vertices"] > 1000


def test_seconds_to_psnr_takes_the_first_evaluation_at_or_above_each_mark(tmp_path):
    import scene3d.train

    timeline = [{"step": 1, "seconds": 10.0, "cpu_seconds": 1.0, "psnr": 24.0},
                {"step": 2, "seconds": 20.0, "cpu_seconds": 2.0, "psnr": 26.5},
                {"step": 3, "seconds": 30.0, "cpu_seconds": 3.0, "psnr": 25.5},
                {"step": 4, "seconds": 40.0, "cpu_seconds": 4.0, "psnr": 28.0}]
    cfg = _cfg(tmp_path, "m", psnr_marks=(25.0, 28.0, 30.0))
    splits = load_splits(cfg)
    trainer = SplatTrainer(cfg, splits["train"], splits["test"])
    metrics = trainer.finish(None, scene3d.train.FitResult(4, 4, True, 40.0, 4.0, timeline))
    assert metrics["seconds_to_psnr"] == {"25": 20.0, "28": 40.0, "30": None}
    assert metrics["cpu_seconds_to_psnr"] == {"25": 2.0, "28": 4.0, "30": None}


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
    assert cfg.steps == 7 and cfg.run.name == preset.run.name == "cpu10min" and cfg.densify == preset.densify
    assert cfg.run.eval_every == 100
    assert script.parse(["--preset", "cpu10min", "--eval-every", "50"]).run.eval_every == 50
    assert cfg.eps2d == preset.eps2d == 0.1 and script.parse(["--preset", "cpu10min", "--eps2d", "0.3"]).eps2d == 0.3
    assert script.parse([]) == FitConfig()
    with pytest.raises(SystemExit):
        script.parse(["--preset", "nonexistent"])
