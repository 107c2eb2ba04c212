"""Issue 25's findings, one test (or more) per numbered finding, through the scripts and readers a
user runs: a rerun never reports another run's model; no value that overflows float32 or a pose
that is not rigid reaches training; fit_splats' test split errors are not swallowed; zero values,
crafted checkpoints, tiny images, empty PLYs, huge worlds and special files are one line (exit 2);
a NaN checkpoint is never the "last good" one; readers check frame counts and budgets before
decoding. The viewer's cases (finding 3) are in tests/test_viewer_access.py, the memory test
(finding 9) in tests/test_viewer_load.py. docs/reliability.md lists them."""

from __future__ import annotations

import json
import os
import runpy
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from scene3d.checkpoint import load_checkpoint, save_checkpoint
from scene3d.data.dataset import make_multiview_dataset
from scene3d.data.formats import load_dataset, save_blender
from scene3d.data.synthetic import make_world
from scene3d.errors import DataError, NonFiniteError
from scene3d.guard import FiniteGuard
from scene3d.runs import RunDir
from viewer.inputs import open_input

ROOT = Path(__file__).parents[1]
TINY_FIELD = ["--field", "mlp", "--steps", "4", "--checkpoint-every", "2", "--eval-every", "1000", "--eval-views", "1",
              "--batch-rays", "32", "--n-samples", "8", "--n-train-views", "2", "--n-test-views", "1",
              "--image-size", "16", "--turntable-frames", "0", "--device", "cpu", "--name", "r"]


def script(name: str, *args: str, capsys) -> tuple[int, str]:
    """Run `scripts/<name>.py` in this process: (exit code, its `error:` lines joined)."""
    argv = sys.argv
    sys.argv = [name, *args]
    try:
        runpy.run_path(str(ROOT / "scripts" / f"{name}.py"), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
    err = capsys.readouterr().err.replace("\r", "\n")
    return code, "\n".join(line for line in err.splitlines() if line.startswith("error"))


def fit_field(out: Path, *args: str, capsys) -> tuple[int, str]:
    return script("fit_field", *TINY_FIELD, "--output-root", str(out), *args, capsys=capsys)


@pytest.fixture(scope="module")
def splits():
    return make_multiview_dataset(make_world(2), n_train=3, n_val=1, n_test=2, width=16, height=16, seed=1)


@pytest.fixture
def dataset(splits, tmp_path) -> Path:
    save_blender(splits, tmp_path / "data")
    return tmp_path / "data"


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


# 1. resume ignores the config ------------------------------------------------------------------
def test_1_rerun_with_another_seed_is_refused_naming_the_seed(tmp_path, capsys):
    assert fit_field(tmp_path, capsys=capsys) == (0, "")
    code, err = fit_field(tmp_path, "--seed", "1", capsys=capsys)
    assert code == 2 and err.count("\n") == 0 and "'seed' is 0 there, 1 now" in err, err
    assert json.loads((tmp_path / "fields" / "r" / "config.json").read_text())["seed"] == 0  # not overwritten


def test_1_rerun_on_changed_data_is_refused_naming_the_data(dataset, tmp_path, capsys):
    assert fit_field(tmp_path, "--data", str(dataset), capsys=capsys) == (0, "")
    _edit(dataset / "transforms_train.json", lambda doc: doc["frames"][0]["transform_matrix"][0].__setitem__(3, 0.5))
    code, err = fit_field(tmp_path, "--data", str(dataset), capsys=capsys)
    assert code == 2 and "'inputs.data." in err, err


# 2. checkpoint rotation deletes a new run's checkpoints ----------------------------------------------------
def test_2_a_fresh_start_never_keeps_or_resumes_an_older_runs_checkpoints(tmp_path, capsys):
    assert fit_field(tmp_path, "--steps", "6", capsys=capsys) == (0, "")  # steps 4, 6 kept
    assert fit_field(tmp_path, "--no-resume", "--seed", "1", "--steps", "2", "--checkpoint-every", "1",
                     capsys=capsys) == (0, "")
    run = RunDir(tmp_path / "fields" / "r")
    assert [step for step, _ in run.checkpoints()] == [1, 2]
    state, _ = run.load_latest()
    assert json.loads(state["loop"]["identity"])["seed"] == 1


# 4. values that overflow float32 pass the finite check; non-rigid poses ------------------------------------
@pytest.mark.parametrize("key", ["fl_x", "fl_y"])
def test_4_intrinsics_that_vanish_or_overflow_in_float32_are_refused(dataset, key):
    for value in (1e-50, 1e50):
        _edit(dataset / "transforms_train.json", lambda doc, v=value: doc.update({key: v}))
        with pytest.raises(DataError, match=rf"transforms_train\.json: {key}: .*float32"):
            load_dataset(dataset, "train")


def _shear(m):
    m[0][1] += 0.3


def _scale(m):
    for row in m[:3]:
        row[:3] = [2 * v for v in row[:3]]


def _mirror(m):
    for row in m[:3]:
        row[0] = -row[0]


def _projective(m):
    m[3] = [0.0, 0.1, 0.0, 1.0]


def _overflow(m):
    m[0][3] = 1e39


@pytest.mark.parametrize("change", [_shear, _scale, _mirror, _projective, _overflow])
def test_4_poses_that_are_not_rigid_or_overflow_are_refused(dataset, change):
    _edit(dataset / "transforms_train.json", lambda doc: change(doc["frames"][2]["transform_matrix"]))
    with pytest.raises(DataError, match=r"frames\[2\]\.transform_matrix"):
        load_dataset(dataset, "train")


def test_4_a_field_never_trains_on_rays_that_are_not_finite():
    """NaN rays render as background with a finite loss, so they are refused before training."""
    from scene3d.fields.train import FieldTrainer, FitConfig

    train = make_multiview_dataset(make_world(0), n_train=2, n_val=1, n_test=1, width=8, height=8)["train"]
    train.cameras.K[0, 0, 0] = 1e-45  # a dataset made in memory, past the readers' checks
    with pytest.raises(DataError, match="rays are not finite"):
        FieldTrainer(FitConfig(field="mlp", device="cpu"), train)


# 6. fit_splats swallows any test-split error -----------------------------------------------------
def test_6_a_damaged_test_split_is_an_error_not_training_view_metrics(dataset, tmp_path, capsys):
    (dataset / "transforms_test.json").write_text("{ not json")
    code, err = script("fit_splats", "--data", str(dataset), "--output-root", str(tmp_path), "--steps", "2",
                       "--no-export-mesh", "--turntable-frames", "1", capsys=capsys)
    assert code == 2 and "transforms_test.json" in err, err


def test_6_a_missing_test_split_still_evaluates_on_training_views_with_a_warning(dataset, tmp_path, capsys):
    from scene3d.gaussians.train import FitConfig, load_splits

    (dataset / "transforms_test.json").unlink()
    splits = load_splits(FitConfig(data=dataset))
    assert splits["test"] is splits["train"] and "test metrics are on the training views" in capsys.readouterr().err


# 7. tracebacks instead of one line, exit 2 --------------------------------------------------------
@pytest.mark.parametrize("flag", ["--batch-rays", "--checkpoint-every", "--log-every", "--n-samples", "--steps",
                                  "--n-train-views", "--image-size"])
def test_7_zero_and_negative_cli_values_are_one_line_naming_the_flag(flag, tmp_path, capsys):
    for value in ("0", "-3"):
        code, err = fit_field(tmp_path, flag, value, capsys=capsys)
        assert code == 2 and err.startswith(f"error: {flag}: must be at least 1"), (value, err)


SCRIPT_CASES = {
    "fit_splats": ["--batch-cameras", "0"], "make_world": ["--n-train", "0"], "train_prior": ["--steps", "-1"],
    "distill_score": ["--steps", "0"], "distill_volume": ["--steps", "0"], "train_avfm": ["--batch-size", "0"],
    "train_teacher": ["--n", "0"], "splat_distill": ["--worlds.n-distill", "0"], "eval_avfm": ["--probe-steps", "0"],
    "eval_3d_awareness": ["--run.worlds.size", "2"], "view": ["synthetic:0", "--port", "70000"],
    "bench_avfm": ["--threads", "0"], "bench_fields": ["--eval-every", "0"]}


@pytest.mark.parametrize("name", sorted(SCRIPT_CASES))
def test_7_every_script_validates_its_config_before_running(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = SCRIPT_CASES[name]
    flag = args[-2].removeprefix("--run.")  # a nested job config names its flags from itself
    code, err = script(name, *args, capsys=capsys)
    assert code == 2 and err.count("\n") == 0 and err.startswith(f"error: --{flag.lstrip('-')}: "), err
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("step", ["-5", "7", "'x'"])
def test_7_a_crafted_checkpoint_step_is_one_line(step, tmp_path, capsys):
    assert fit_field(tmp_path, capsys=capsys) == (0, "")
    path = tmp_path / "fields" / "r" / "checkpoints" / "step_0000004.safetensors"
    state, config = load_checkpoint(path)
    save_checkpoint(path, {**state, "step": eval(step)}, config)  # noqa: S307 - a literal of this test
    code, err = fit_field(tmp_path, "--steps", "6", capsys=capsys)
    assert code == 2 and "step_0000004.safetensors" in err and "step" in err, err


def test_7_one_pixel_images_train_evaluate_and_keep_the_final_checkpoint(tmp_path, capsys):
    splits = make_multiview_dataset(make_world(0), n_train=2, n_val=1, n_test=1, width=1, height=1, seed=0)
    save_blender(splits, tmp_path / "data")
    assert fit_field(tmp_path, "--data", str(tmp_path / "data"), capsys=capsys) == (0, "")
    assert [s for s, _ in RunDir(tmp_path / "fields" / "r").checkpoints()] == [2, 4]


def test_7_a_crash_in_the_final_evaluation_keeps_the_final_checkpoint(tmp_path, monkeypatch, capsys):
    from scene3d.fields.train import FieldTrainer

    def broken(self, run, result):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(FieldTrainer, "finish", broken)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        fit_field(tmp_path, capsys=capsys)
    assert [s for s, _ in RunDir(tmp_path / "fields" / "r").checkpoints()][-1] == 4


def test_7_zero_training_views_is_one_line(dataset, tmp_path, capsys):
    _edit(dataset / "transforms_train.json", lambda doc: doc.update(frames=[]))
    code, err = fit_field(tmp_path, "--data", str(dataset), capsys=capsys)
    assert code == 2 and "transforms_train.json" in err and "frames" in err, err


@pytest.mark.parametrize("n_objects", [[-1, 2], [2_000_000, 2_000_000]])
def test_7_a_world_json_with_negative_or_millions_of_objects_is_one_line(n_objects, dataset, tmp_path):
    (dataset / "world.json").write_text(json.dumps({"config": {"seed": 0, "world": {"n_objects": n_objects}}}))
    with pytest.raises(DataError, match=r"world\.json.*n_objects"):
        open_input(str(dataset))


def _blocking(target, *args):
    """Run `target(*args)` in a daemon thread: its exception, or "hang" when it has not returned in 60 s."""
    outcome = []

    def run():
        try:
            target(*args)
            outcome.append(None)
        except Exception as err:  # noqa: BLE001 - handed to the test
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    return outcome[0] if outcome else "hang"


def test_7_a_fifo_named_like_a_checkpoint_is_one_error_not_a_hang(tmp_path):
    from scene3d.errors import CheckpointError

    run = RunDir(tmp_path / "r")
    os.mkfifo(run.file("checkpoints", "step_0000010.safetensors"))
    found = _blocking(run.load_latest)
    assert isinstance(found, CheckpointError) and "FIFO" in str(found), found


def test_7_a_dev_zero_symlink_named_like_a_checkpoint_or_ply_is_refused_unread(tmp_path):
    from scene3d.errors import CheckpointError
    from scene3d.gaussians.ply import read_ply

    run = RunDir(tmp_path / "r")
    os.symlink("/dev/zero", run.file("checkpoints", "step_0000010.safetensors"))
    os.symlink("/dev/zero", tmp_path / "scene.ply")
    with pytest.raises(CheckpointError, match="character device"):
        run.load_latest()
    with pytest.raises(DataError, match="character device"):
        read_ply(tmp_path / "scene.ply")


def test_7_an_empty_ply_in_the_viewer_is_one_line(tmp_path):
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    header = ["ply", "format binary_little_endian 1.0", "element vertex 0", *[f"property float {n}" for n in names],
              "end_header"]
    (tmp_path / "empty.ply").write_bytes(("\n".join(header) + "\n").encode())
    with pytest.raises(DataError, match="empty.ply.*no Gaussians"):
        open_input(str(tmp_path / "empty.ply"))


# 8. smaller ------------------------------------------------------------------------------------------
def test_8_a_checkpoint_of_nan_weights_is_never_the_last_good_one(tmp_path):
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder / "step_0000005.safetensors", {"w": torch.ones(3)}, {})
    save_checkpoint(folder / "step_0000010.safetensors", {"w": torch.tensor([1.0, float("nan"), 0.0])}, {})
    with pytest.raises(NonFiniteError, match="step_0000005.safetensors") as err:
        FiniteGuard("stop", folder).loss(11, torch.tensor(float("nan")))
    assert "step_0000010" not in str(err.value)


def test_8_resuming_a_checkpoint_of_nan_weights_is_one_line(tmp_path, capsys):
    assert fit_field(tmp_path, capsys=capsys) == (0, "")
    path = tmp_path / "fields" / "r" / "checkpoints" / "step_0000004.safetensors"
    state, config = load_checkpoint(path)
    key = next(k for k in state["field"] if state["field"][k].is_floating_point())
    state["field"][key] = torch.full_like(state["field"][key], float("nan"))
    save_checkpoint(path, state, config)
    code, err = fit_field(tmp_path, "--steps", "6", capsys=capsys)
    assert code == 2 and "NaN" in err and "step_0000004" in err, err


def test_8_scalars_are_logged_once_per_step_across_a_resume(tmp_path, capsys):
    """Scalars are logged at the last step (3); the run is killed before its checkpoint of step 3."""
    assert fit_field(tmp_path, "--steps", "3", capsys=capsys) == (0, "")
    run = tmp_path / "fields" / "r"
    (run / "checkpoints" / "step_0000003.safetensors").unlink()  # killed after logging step 3, before saving it
    (run / "metrics.json").unlink()
    assert fit_field(tmp_path, "--steps", "3", capsys=capsys) == (0, "")
    lines = [json.loads(line) for line in (run / "scalars.jsonl").read_text().splitlines()]
    train_steps = [line["step"] for line in lines if any(k.startswith("train/") for k in line)]
    assert train_steps == [3], train_steps


def test_8_the_viewer_opens_a_run_whose_newest_checkpoint_is_damaged_as_training_does(tmp_path, capsys):
    assert fit_field(tmp_path, "--steps", "6", capsys=capsys) == (0, "")
    run = tmp_path / "fields" / "r"
    (run / "checkpoints" / "step_0000006.safetensors").write_bytes(b"damaged")
    content = open_input(str(run))
    assert content.source is not None


def test_8_scene_bounds_of_more_gaussians_than_torch_quantile_takes():
    from viewer.adapters.gaussians import scene_bounds

    means = torch.zeros(2**24 + 3, 3)
    means[:, 0] = torch.linspace(-1, 1, len(means))
    lo, hi = scene_bounds(SimpleNamespace(means=means))
    assert lo[0].item() == pytest.approx(-0.96, abs=1e-3) and hi[0].item() == pytest.approx(0.96, abs=1e-3)


# 5. no total decode budget -----------------------------------------------------------------------------
def test_5_an_animated_image_is_refused_before_decoding(dataset):
    frame = dataset / "train" / sorted(os.listdir(dataset / "train"))[0]
    first = Image.open(frame).convert("RGB")
    first.save(frame, format="PNG", save_all=True, append_images=[first.rotate(90)] * 3)
    with pytest.raises(DataError, match="4 frames"):
        load_dataset(dataset, "train")


def test_5_the_dataset_budget_is_checked_from_headers_and_named(dataset):
    from scene3d.data.formats import Budget

    _edit(dataset / "transforms_train.json", lambda doc: doc.update(frames=doc["frames"][:1] * 10_000))
    with pytest.raises(DataError, match=r"budget of 100000 pixels"):
        load_dataset(dataset, "train", budget=Budget(pixels=100_000))
    with pytest.raises(DataError, match=r"budget of 2000 bytes"):
        load_dataset(dataset, "train", budget=Budget(bytes=2000))


def test_5_frame_counts_are_read_from_headers_only(tmp_path):
    from scene3d.data.formats import _check_image_size

    path = tmp_path / "anim.gif"
    frames = [Image.fromarray(np.full((4, 4, 3), k, np.uint8)) for k in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match="3 frames"):
        _check_image_size(path, "file_path")
