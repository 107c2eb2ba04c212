"""Probes and metrics on planted cases; the evaluation pipeline end to end on toy scenes."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from avfm.coords import flat_grid
from avfm.evaluate import (
    EvalConfig,
    evaluate,
    input_matched_px,
    load_run,
    run_evaluation,
    teacher_view,
    write_locality,
)
from avfm.glimpse import Viewpoint
from avfm.model import CONFIGS, CanViT, State, build_model
from avfm.probes import SegProbe, entropy_map, fit_cls_probe, fit_seg_probe, top1
from avfm.teachers import build_teacher
from avfm.train import DataConfig, OptimConfig, TeacherConfig, TrainConfig, train
from scene3d.metrics import miou
from scene3d.train import RunConfig


def test_miou_known_values():
    target = torch.tensor([[0, 0, 1, 1]])
    assert miou(target, target, 3) == 1.0
    pred = torch.tensor([[0, 1, 1, 1]])
    # class 0: inter 1, union 2; class 1: inter 2, union 3; class 2 absent
    assert miou(pred, target, 3) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert top1(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1])) == 0.5


def test_seg_probe_recovers_planted_classes():
    torch.manual_seed(0)
    n, g, d, c = 64, 4, 16, 3
    cls_grid = torch.randint(c, (n, g, g))
    tokens = torch.randn(n, g * g, d) * 0.3
    tokens[..., :c] += 3.0 * torch.nn.functional.one_hot(cls_grid.flatten(1), c)
    labels = cls_grid.repeat_interleave(4, 1).repeat_interleave(4, 2)  # 16 x 16 labels, 4 x 4 px per token
    probe = fit_seg_probe(tokens, labels, c, steps=200, lr=1e-2)
    pred = probe(tokens, size=(16, 16)).argmax(1)
    # bilinear upsampling blurs token borders a little; the planted classes must come back nearly exactly
    assert miou(pred, labels, c) > 0.8
    assert isinstance(probe, SegProbe) and not probe.training
    ent = entropy_map(probe, tokens[:2])
    assert ent.shape == (2, g, g) and (ent >= 0).all()


def test_cls_probe_on_planted_cls():
    torch.manual_seed(0)
    y = torch.randint(2, (128,))
    x = torch.randn(128, 8)
    x[:, 0] += 4 * (y * 2 - 1)
    probe = fit_cls_probe(x, y, 2, steps=100, lr=1e-2)
    assert top1(probe(x), y) > 0.95


def test_evaluation_end_to_end(tmp_path):
    cfg = TrainConfig(
        data=DataConfig(source="toy", n_train=16, n_val=8, resolution=64),
        teacher=TeacherConfig(name="random_vit"),
        optim=OptimConfig(lr=2e-3, warmup_steps=2),
        steps=4,
        batch_size=4,
        run=RunConfig(name="e2e", output_root=tmp_path, progress=False),
    )
    trained = train(cfg)
    model, _, teacher, train_set, val_set = load_run(trained["run_dir"])
    metrics = evaluate(
        model,
        teacher,
        train_set,
        val_set,
        EvalConfig(steps=3, probe_rollout=2, probe_steps=10, policies=("c2f", "eg_c2f", "f2c")),
    )
    assert set(metrics["policies"]) == {"c2f", "eg_c2f", "f2c"}
    assert all(len(v["miou"]) == 3 and len(v["top1"]) == 3 for v in metrics["policies"].values())
    assert {"teacher_full", "teacher_input_matched", "teacher_flop_matched"} <= set(metrics["baselines"])
    # input-matched: the glimpse's pixels (32 px) on the glimpse's token grid (4 x 4 tokens of the 8 px teacher)
    matched = metrics["baselines"]["teacher_input_matched"]
    assert (matched["source_px"], matched["px"]) == (model.cfg.glimpse_px, 32)
    assert all(len(v["patch_mse"]) == 3 and min(v["patch_mse"]) > 0 for v in metrics["policies"].values())
    assert set(metrics["write_outside_over_inside"]) == {"level1", "level2"}
    json.dumps(metrics)


def test_input_matched_teacher_sees_the_full_view_glimpse_on_the_glimpse_token_grid():
    """As the paper's input-matched baseline: the teacher gets exactly the pixels of CanViT's full-scene glimpse
    (16 px here), resampled so that its token grid is one glimpse's (4 x 4 tokens of its 8 px patches)."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    teacher = build_teacher("random_vit", seed=0, dim=24, depth=1, heads=2)
    model = build_model("canvit_tiny_g16")
    px = input_matched_px(model, teacher)
    view = teacher_view(images, px, source_px=model.cfg.glimpse_px)
    glimpse = model.glimpse(images, Viewpoint.full(2))
    expected = F.interpolate(glimpse, size=(px, px), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(view, expected)
    assert teacher(view).grid == (model.cfg.glimpse_grid,) * 2 == (4, 4)
    assert not torch.allclose(view, teacher_view(images, px), atol=1e-2)  # the direct 32 px view has more detail


def test_runs_of_several_seeds_give_mean_std_json_and_one_png_per_table(tmp_path):
    runs = []
    for seed in (0, 1):
        cfg = TrainConfig(data=DataConfig(source="toy", n_train=8, n_val=4, resolution=64),
                          teacher=TeacherConfig(name="random_vit"), optim=OptimConfig(lr=2e-3, warmup_steps=1),
                          steps=2, batch_size=2, seed=seed,
                          run=RunConfig(name=f"s{seed}", output_root=tmp_path, progress=False))
        runs.append(train(cfg)["run_dir"])
    cfg = EvalConfig(run_dir=tuple(runs), steps=2, probe_rollout=1, probe_steps=5, policies=("c2f", "repeated_full"),
                     name="seeds", output_root=tmp_path)
    result = run_evaluation(cfg)
    saved = json.loads((tmp_path / "avfm_eval" / "seeds" / "metrics.json").read_text())
    assert saved["seeds"] == [0, 1]
    c2f = saved["policies"]["c2f"]["miou"]
    per_seed = torch.tensor(c2f["per_seed"])
    assert per_seed.shape == (2, 2)
    assert torch.allclose(torch.tensor(c2f["mean"], dtype=torch.float64), per_seed.double().mean(0))
    assert torch.allclose(torch.tensor(c2f["std"], dtype=torch.float64), per_seed.double().std(0, correction=0))
    rfs = torch.tensor(saved["policies"]["repeated_full"]["miou"]["per_seed"])
    paired = torch.tensor(saved["c2f_minus"]["repeated_full"]["per_seed"])
    assert torch.allclose(paired, per_seed - rfs, atol=1e-6)
    base = saved["baselines"]["teacher_full"]["miou"]
    assert len(base["per_seed"]) == 2 and base["std"] >= 0
    assert (tmp_path / "avfm_eval" / "seeds" / "miou.png").stat().st_size > 0
    assert (tmp_path / "avfm_eval" / "seeds" / "top1.png").stat().st_size > 0
    assert result["seeds"] == [0, 1]
    with pytest.raises(ValueError, match="repeat pretraining seeds"):
        run_evaluation(dataclasses.replace(cfg, run_dir=(runs[0], runs[0]), name="twice"))


class _PlantedWriter(CanViT):
    """Writes +1 to the canvas cells inside the glimpse and `leak` to those outside."""

    def __init__(self, leak: float):
        super().__init__(CONFIGS["canvit_tiny"])
        self.leak = leak

    def step(self, glimpse, viewpoint, state, heads=True):
        pos = flat_grid(self.canvas_grid_of(state))
        inside = ((pos[None] - viewpoint.center[:, None]).abs() <= viewpoint.scale[:, None, None]).all(-1)
        cells = self.canvas_cells(state) + torch.where(inside, 1.0, self.leak)[..., None]
        return State(torch.cat([state.canvas[:, : self.cfg.canvas_registers], cells], 1), state.cls), None


def test_write_locality_on_planted_writers():
    images, vp = torch.rand(2, 3, 64, 64), Viewpoint.make(-0.75, -0.75, 0.25, batch_size=2)
    for leak in (0.0, 0.3, 1.0):
        model = _PlantedWriter(leak)
        assert write_locality(model, model.init_state(2), images, vp) == pytest.approx(leak)


def test_eval_script_bad_run_dir_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "scripts/eval_avfm.py"), "--run-dir", str(tmp_path / "missing")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "config.json" in result.stderr and result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "missing").exists()
