"""`avfm.load_pretrained`: the reference implementation's checkpoints (layouts 0.1 and 0.2) reproduce its
outputs; every checkpoint that does not fit fails in one line naming the key."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from avfm import load_pretrained
from avfm.evaluate import EvalConfig, run_evaluation
from avfm.glimpse import IMAGENET_MEAN, IMAGENET_STD, Viewpoint, extract_glimpse
from avfm.model import CONFIGS
from avfm.pretrained import BACKBONES, pretrained_config, rw_positions
from avfm.train import DataConfig
from scene3d.errors import CheckpointError

FIXTURES = Path(__file__).parent / "fixtures"
LAYOUTS = {"0.1": FIXTURES / "canvit_reference_tiny", "0.2": FIXTURES / "canvit_reference_tiny_v02"}
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("fast", [True, False], ids=["fast_canvas", "reference_canvas"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_reference_rollout_reproduced_at_every_step(layout, fast):
    folder = LAYOUTS[layout]
    model = load_pretrained(folder)
    model.fast_canvas = fast
    assert pretrained_config(folder).layout == layout and model.cfg.glimpse_px == 32
    inputs, expected = load_file(folder / "inputs.safetensors"), load_file(folder / "expected.safetensors")
    state = model.init_state(2, 8)
    with torch.no_grad():
        for t in range(3):
            vp = Viewpoint(inputs["centers"][t], inputs["scales"][t])
            glimpse = extract_glimpse(inputs["image"], vp, model.cfg.glimpse_px)
            state, out = model.step(glimpse, vp, state)
            patches, cls = model.destandardize(out.scene_patches, out.scene_cls)
            got = {"glimpse": glimpse, "canvas": state.canvas, "recurrent_cls": state.cls,
                   "local_patches": out.local_patches, "scene_patches_pred_standardized": out.scene_patches,
                   "scene_patches_pred": patches, "scene_cls_pred": cls}
            for name, value in got.items():
                ref = expected[f"step{t}.{name}"]
                assert value.shape == ref.shape, (t, name)
                assert (value - ref).abs().max() <= 1e-5, (t, name, float((value - ref).abs().max()))


def _write_config(folder: Path, layout: str, backbone: str, **model_fields) -> Path:
    folder.mkdir()
    fields = {"rw_stride": 2, "enable_reads": True, "n_canvas_registers": 16, "canvas_num_heads": 8,
              "canvas_head_dim": 128, "enable_vpe": True} | model_fields
    if layout == "0.1":
        config = {"backbone_name": backbone, "canvas_patch_grid_sizes": [32, 64],
                  "model_config": fields | {"n_backbone_registers": 5, "canvas_update_mode": "additive",
                                            "canvas_proj_mode": "asymmetric", "gate_bias_init": None,
                                            "teacher_dim": 768}}
    else:
        config = {"teacher_dim": 768, "teacher_patch_grid": 32,
                  "canvit_config": fields | {"backbone_name": backbone, "num_backbone_registers": 5,
                                             "canvas_projections": "asymmetric"}}
    (folder / "config.json").write_text(json.dumps(config | {"metadata": {"glimpse_grid_size": 8}}))
    return folder


@pytest.mark.parametrize("layout", ["0.1", "0.2"])
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_published_backbones_map_to_our_config(tmp_path, layout, backbone):
    cfg = pretrained_config(_write_config(tmp_path / "ckpt", layout, backbone)).model
    dims = BACKBONES[backbone]
    assert (cfg.dim, cfg.heads, cfg.depth, cfg.patch_size) == (
        dims["embed_dim"], dims["num_heads"], dims["n_blocks"], dims["patch_size"])
    assert (cfg.canvas_dim, cfg.canvas_heads, cfg.glimpse_px, cfg.teacher_dim) == (1024, 8, 128, 768)
    if backbone == "vitb16":  # CanViT-B as published is our canvit_b, on ImageNet-normalised scenes
        assert cfg == dataclasses.replace(CONFIGS["canvit_b"], imagenet_norm=True)
    if backbone == "vitl16":
        assert cfg.read_after == (1, 5, 9, 13, 17, 21) and cfg.write_after == (3, 7, 11, 15, 19, 23)


def test_rw_positions_end_with_a_write():
    assert rw_positions(12, 2, True) == ((1, 5, 9), (3, 7, 11))
    assert rw_positions(12, 3, True) == ((2, 8), (5, 11))
    assert rw_positions(4, 2, False) == ((), (3,))


def _copy(tmp_path: Path, layout: str = "0.1") -> Path:
    return Path(shutil.copytree(LAYOUTS[layout], tmp_path / f"ckpt{layout}"))


def _edit_tensors(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _raises(folder: Path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as err:
        load_pretrained(folder)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_unknown_missing_and_misshapen_tensors_are_named(tmp_path):
    folder = _copy(tmp_path)
    _edit_tensors(folder, lambda t: t.update({"canvas_read.0.gate.weight": torch.zeros(3)}))
    _raises(folder, "model.safetensors: canvas_read.0.gate.weight: unknown tensor")

    folder = _copy(tmp_path, "0.2")
    _edit_tensors(folder, lambda t: t.pop("canvit.canvas_writes.0.k_map.bias"))
    _raises(folder, "canvit.canvas_writes.0.k_map.bias: missing tensor")

    shutil.rmtree(folder)
    folder = _copy(tmp_path, "0.2")
    _edit_tensors(folder, lambda t: t.pop("teacher_cls_standardizer.fitted"))
    _raises(folder, "teacher_cls_standardizer.fitted: missing tensor")

    shutil.rmtree(folder)
    folder = _copy(tmp_path, "0.2")
    _edit_tensors(folder, lambda t: t.update({"canvit.backbone.blocks.2.attn.qkv.weight": torch.zeros(192, 32)}))
    _raises(folder, r"canvit.backbone.blocks.2.attn.qkv.weight: shape \(192, 32\), the config needs \(192, 64\)")

    shutil.rmtree(folder)
    folder = _copy(tmp_path, "0.2")
    _edit_tensors(folder, lambda t: t.update({"teacher_patch_standardizer.fitted": torch.tensor(False)}))
    _raises(folder, "teacher_patch_standardizer.fitted: this standardizer's statistics were never fitted")


def test_configs_it_cannot_map_are_named(tmp_path):
    folder = _copy(tmp_path)
    _edit_config(folder, lambda c: c["model_config"].update(canvas_update_mode="convex", gate_bias_init=-2.0))
    _raises(folder, "model_config.canvas_update_mode: 'convex' is not supported")

    _edit_config(folder, lambda c: c["model_config"].update(canvas_update_mode="additive", gate_bias_init=None,
                                                            new_feature=1))
    _raises(folder, "model_config.new_feature: unknown field")

    folder = _copy(tmp_path, "0.2")
    _edit_config(folder, lambda c: (c.pop("backbone_config"), c["canvit_config"].update(backbone_name="vitg14")))
    _raises(folder, "backbone_name: unknown backbone 'vitg14'")

    _edit_config(folder, lambda c: c.pop("canvit_config"))
    _raises(folder, "neither canvit-pytorch layout")

    (folder / "config.json").unlink()
    _raises(folder, "config.json: missing")


def test_pickled_weights_are_never_read(tmp_path):
    folder = _copy(tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    _raises(folder, r"model.safetensors: missing \(pytorch_model.bin not read")


def test_cli_given_a_bad_checkpoint_exits_2_with_one_line(tmp_path):
    folder = _copy(tmp_path)
    _edit_tensors(folder, lambda t: t.pop("vpe.B"))
    proc = subprocess.run([sys.executable, "scripts/eval_avfm.py", "--canvit", str(folder)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "vpe.B: missing tensor" in proc.stderr


def test_loaded_model_glimpses_imagenet_normalised_scenes():
    model = load_pretrained(LAYOUTS["0.2"])
    scenes, vp = torch.rand(2, 3, 40, 40), Viewpoint.make(0.5, -0.25, 0.75, 2)  # partly outside the scene
    normalised = (scenes - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(model.glimpse(scenes, vp), extract_glimpse(normalised, vp, 32))


@pytest.mark.slow
def test_eval_runs_the_probes_on_a_published_checkpoint(tmp_path):
    cfg = EvalConfig(canvit=LAYOUTS["0.1"], data=DataConfig(source="toy", n_train=4, n_val=2), policies=("c2f",),
                     steps=2, probe_rollout=1, probe_steps=3, output_root=tmp_path)
    metrics = run_evaluation(cfg)
    assert len(metrics["policies"]["c2f"]["miou"]["mean"]) == 2 and metrics["baselines"] == {}
    assert metrics["seeds"] == [cfg.seed] and metrics["c2f_minus"] == {}
    assert metrics["canvas_grid"] == 8 and metrics["glimpse_px"] == 32
