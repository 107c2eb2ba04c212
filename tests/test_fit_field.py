"""Fitting fields to multi-view images: every architecture learns a tiny scene, runs write their
outputs, and an interrupted run resumes exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lab.bench.fields import steps_in_budget
from scene3d.errors import CheckpointError
from scene3d.fields import FIELDS, build_field, load_field
from scene3d.fields.train import FieldTrainer, FitConfig, fit_field
from scene3d.render import OccupancyGridConfig
from scene3d.train import RunConfig, Stepper
from tests._field_scenes import blob_views, psnr

# Sizes for a 16x16, 12-view scene on a CPU, and the test PSNR each reaches in STEPS steps.
SMALL = {
    "mlp": {},
    "tensorf": {"resolution_init": 24, "resolution_final": 48, "upsample_steps": (50, 100)},
    "grid": {"resolution": 32},
    "hashgrid": {"log2_table_size": 14},
}
STEPS = {"mlp": 200, "tensorf": 150, "grid": 150, "hashgrid": 300}
MIN_PSNR = {"mlp": 22.0, "tensorf": 28.0, "grid": 21.0, "hashgrid": 20.0}
FAST_OCCUPANCY = OccupancyGridConfig(resolution=16, decay=0.7, update_every=8, warmup_steps=96)


@pytest.fixture(scope="module")
def blob_data():
    return blob_views(12), blob_views(3, offset_deg=15.0)


def small_config(field: str, **overrides) -> FitConfig:
    """FitConfig of a small run; RunConfig's options (name, output_root, eval_every, ...) go to `run`."""
    loop = {k: overrides.pop(k) for k in list(overrides) if k in RunConfig.__dataclass_fields__}
    return FitConfig(**{"field": field, "steps": STEPS[field], "batch_rays": 256, "n_samples": 32, "device": "cpu",
                        "occupancy": FAST_OCCUPANCY, "run": RunConfig(**loop), **overrides})


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_each_architecture_fits_a_tiny_scene(name, blob_data):
    train, test = blob_data
    torch.manual_seed(0)
    trainer = FieldTrainer(small_config(name), train, test, build_field(name, **SMALL[name]))
    before = psnr(trainer.render(test.cameras)["rgb"], test.images)
    step = Stepper(trainer)
    while step.step < trainer.config.steps:
        step()
    after = psnr(trainer.render(test.cameras)["rgb"], test.images)
    assert after > MIN_PSNR[name] > before + 5, (before, after)


def test_bench_learning_rate_decays_over_the_time_budget(blob_data):
    """bench_fields trains for a time budget: its step-count estimate puts the decay at
    lr_final_ratio ** (seconds / budget), here half-way after 10 steps of 0.5 s in a 10 s budget."""
    trainer = FieldTrainer(small_config("grid", steps=10**6), *blob_data, build_field("grid", resolution=16))
    step = Stepper(trainer)
    for _ in range(10):
        step()
        trainer.config.steps = steps_in_budget(step.step, 0.5 * step.step, budget=10.0)
    step()
    group = trainer.optimizer.param_groups[0]
    assert trainer.config.steps == 20
    assert trainer.lr_final_ratio == 0.1  # the grid's own schedule
    assert group["lr"] == pytest.approx(group["base_lr"] * 0.1**0.5)
    assert steps_in_budget(5, seconds=20.0, budget=10.0) == 6  # over budget: never behind the step


def test_each_architecture_brings_its_papers_schedule_and_the_fit_config_overrides_it(blob_data):
    """Instant-NGP keeps its rate constant (it decays only after 20k steps); the others decay to 0.1."""
    ratios = {name: FieldTrainer(small_config(name), *blob_data, build_field(name, **SMALL[name])).lr_final_ratio
              for name in sorted(FIELDS)}
    assert ratios == {"grid": 0.1, "hashgrid": 1.0, "mlp": 0.1, "tensorf": 0.1}
    assert FieldTrainer(small_config("hashgrid", lr_final_ratio=0.3), *blob_data,
                        build_field("hashgrid", **SMALL["hashgrid"])).lr_final_ratio == 0.3


def run_tensorf(tmp_path, data, name: str, steps: int):
    config = small_config("tensorf", steps=steps, name=name, output_root=tmp_path, eval_every=3,
                          checkpoint_every=3, turntable_frames=4, progress=False)
    torch.manual_seed(123)  # a different init each call would not matter: resume loads the state
    field = build_field("tensorf", resolution_init=12, resolution_final=20, upsample_steps=(2, 4))
    return fit_field(config, *data, field=field)


def test_fit_field_writes_outputs_and_resumes_exactly(tmp_path, blob_data):
    _, straight = run_tensorf(tmp_path, blob_data, "run", 6)
    run = tmp_path / "fields" / "run"
    for path in ("config.json", "metrics.json", "scalars.jsonl", "turntable.mp4", "renders/test_000.png"):
        assert (run / path).is_file(), path
    assert list((run / "tb").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["test_psnr"] == straight["test_psnr"]
    assert [t["step"] for t in metrics["timeline"]] == [3, 6]

    # Interrupted after step 3: only that checkpoint is left, and the run is started again.
    final = run / "checkpoints" / "step_0000006.safetensors"
    expected = load_field(final)
    final.unlink()
    _, resumed = run_tensorf(tmp_path, blob_data, "run", 6)
    got = load_field(final)
    assert got.resolution == expected.resolution != (12, 12, 12)   # resumed across an upsampling step
    for (key, x), (_, y) in zip(expected.state_dict().items(), got.state_dict().items(), strict=True):
        assert torch.equal(x, y), key
    assert resumed["test_psnr"] == straight["test_psnr"]


def test_resuming_from_a_corrupt_checkpoint_names_the_file(tmp_path, blob_data):
    run_tensorf(tmp_path, blob_data, "broken", 3)
    ckpt = tmp_path / "fields" / "broken" / "checkpoints" / "step_0000003.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="step_0000003"):
        run_tensorf(tmp_path, blob_data, "broken", 6)


ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "fit_field.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_fit_field_script_reports_missing_data_in_one_line(tmp_path):
    result = run_script("--data", str(tmp_path / "nowhere"), "--output-root", str(tmp_path))
    assert result.returncode == 2
    assert "nowhere" in result.stderr and result.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_fit_field_script_on_a_blender_dataset(tmp_path):
    from scene3d.data.generate import WorldDatasetConfig, write_world_dataset

    data = tmp_path / "world"
    write_world_dataset(WorldDatasetConfig(out=data, n_train=8, n_val=1, n_test=2, width=24, height=24))
    result = run_script("--field", "hashgrid", "--data", str(data), "--steps", "20", "--eval-every", "10",
                        "--batch-rays", "128", "--n-samples", "16", "--turntable-frames", "3",
                        "--output-root", str(tmp_path), "--name", "cli")
    assert result.returncode == 0, result.stderr
    assert "test PSNR" in result.stdout
    metrics = json.loads((tmp_path / "fields" / "cli" / "metrics.json").read_text())
    assert metrics["steps"] == 20 and metrics["test_psnr"] > 5


@pytest.mark.slow
def test_demo_stage_quick(tmp_path):
    from lab.demo.fields import DEMO_FIELD, run_stage

    result = run_stage(tmp_path, quick=True)
    assert result["field"] == DEMO_FIELD and result["test_psnr"] > 18
    assert (tmp_path / "fields" / DEMO_FIELD / "turntable.mp4").is_file()
