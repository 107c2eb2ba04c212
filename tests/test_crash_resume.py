"""Crashes and resumes (`lab.reliability.crash`): every training script SIGKILLed at random
moments (one inside a checkpoint write) and resumed ends bitwise equal to an uninterrupted run;
every checkpoint on disk loads; a full disk or an unwritable output folder is one line on stderr
with earlier checkpoints intact. The subprocess tests are slow; the default suite checks the
pieces in process."""

import errno
import importlib.util
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import tyro

from lab.reliability.crash import (
    SCRIPTS,
    _env,
    command,
    file_size_limit,
    kill_resume,
    prepare,
    run_script,
)
from scene3d.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from scene3d.cli import run_cli
from scene3d.errors import OutputError
from scene3d.runs import RunDir

KILLS = int(os.environ.get("SCENE3D_KILLS", "5"))


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines of a script's stderr (progress bars end in carriage returns)."""
    return [part[part.index("error: "):] for part in stderr.replace("\r", "\n").splitlines() if "error: " in part]


# in process ---------------------------------------------------------------------------------------
def test_load_latest_skips_a_damaged_newest_checkpoint_and_removes_killed_writes(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.save_checkpoint(10, {"w": torch.ones(2)})
    newest = run.save_checkpoint(20, {"w": torch.full((2,), 2.0)})
    newest.write_bytes(newest.read_bytes()[:40])  # damaged after it was written (not by us)
    (run.path / "checkpoints" / ".step_0000030.safetensors.abc.tmp").write_bytes(b"half")
    state, _ = run.load_latest()
    assert state["step"] == 10 and "skipping unreadable checkpoint" in capsys.readouterr().err
    assert not list((run.path / "checkpoints").glob(".*.tmp"))


def test_failed_write_is_one_output_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)})
    before = path.read_bytes()

    def disk_full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as info:
        atomic_write(path, disk_full)
    assert "No space left on device" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_run_cli_reports_unwritable_outputs_in_one_line(capsys):
    def main():
        raise OSError(errno.EFBIG, "File too large", "/out/x.png")

    with pytest.raises(SystemExit) as info:
        run_cli(main)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err == "error: /out/x.png: File too large\n"


def test_slow_write_hook_holds_the_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SCENE3D_FAULT_SLOW_WRITE", "0.3")
    start = time.monotonic()
    save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(1)})
    assert time.monotonic() - start >= 0.3 and load_checkpoint(tmp_path / "c.safetensors")[0]["w"].item() == 1


def test_every_registered_script_exists_and_writes_under_the_given_folder(tmp_path):
    for name, spec in SCRIPTS.items():
        assert command(spec, tmp_path)[1].endswith(spec.script) and os.path.isfile(command(spec, tmp_path)[1]), name
        assert spec.steps % spec.checkpoint_every == 0 and str(tmp_path) in " ".join(spec.argv(tmp_path)), name
        assert spec.run_dir(tmp_path).is_relative_to(tmp_path), name


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_registered_options_parse_against_the_script_config(name, tmp_path):
    """The registry's command lines stay in step with the scripts' options (the kill tests are slow)."""
    path = command(SCRIPTS[name], tmp_path)[1]
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = SCRIPTS[name].argv(tmp_path)
    if hasattr(module, "parse"):  # a script with its own parsing (fit_splats: --preset first)
        config = module.parse(argv)
    else:
        config_name = re.search(r"tyro\.cli\((\w+)\)", Path(path).read_text()).group(1)
        config = tyro.cli(getattr(module, config_name), args=argv)
    assert str(tmp_path) in repr(config)


# subprocesses ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_killed_and_resumed_runs_end_bitwise_equal(name, tmp_path):
    report = kill_resume(name, tmp_path, kills=KILLS, seed=sorted(SCRIPTS).index(name))
    assert not report.problems, report.problems
    assert report.kills >= min(KILLS, 3) and report.kills_in_write == 1, report
    assert report.bitwise_equal and report.max_repeated_steps <= SCRIPTS[name].checkpoint_every


def _run_until_checkpoints(name, out, n: int) -> None:
    """Start the script and SIGKILL it once it has written `n` checkpoints."""
    spec = SCRIPTS[name]
    proc = subprocess.Popen(command(spec, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and len(RunDir(spec.run_dir(out)).checkpoints()) < n:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_full_disk_is_one_line_and_keeps_earlier_checkpoints(name, tmp_path):
    spec = SCRIPTS[name]
    prepare(name, tmp_path)
    _run_until_checkpoints(name, tmp_path, 1)
    run = RunDir(spec.run_dir(tmp_path))
    before = {p: p.read_bytes() for _, p in run.checkpoints()}
    assert before, "no checkpoint before the kill"
    limit = min(len(b) for b in before.values()) // 2
    done = run_script(spec, tmp_path, preexec_fn=file_size_limit(limit))
    lines = error_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "File too large" in lines[0], lines
    for path, raw in before.items():  # the earlier checkpoints: untouched, or rotated away by a newer one
        if path.exists():
            assert path.read_bytes() == raw
    for _, path in run.checkpoints():
        load_checkpoint(path)
    assert not list((run.path / "checkpoints").glob(".*.tmp"))


@pytest.mark.slow
def test_unwritable_output_folder_is_one_line(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder should be")
    done = run_script(SCRIPTS["fit_field"], blocker)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert [line.startswith(f"error: {blocker}") for line in error_lines(done.stderr)] == [True], done.stderr


@pytest.mark.slow
def test_nan_in_a_script_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    spec = SCRIPTS["fit_field"]
    done = run_script(spec, tmp_path, env={"SCENE3D_FAULT_NAN_STEP": "12"})
    (last,) = error_lines(done.stderr)
    assert done.returncode == 2 and last.startswith("error: step 12: loss 'loss' is NaN"), done.stderr[-2000:]
    assert "step_0000010.safetensors" in last
    assert [s for s, _ in RunDir(spec.run_dir(tmp_path)).checkpoints()] == [5, 10]
