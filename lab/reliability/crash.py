"""Kill / resume harness for the training scripts.

`SCRIPTS` is a registry: script -> its tiny configuration (argv writing under an output root), the
run folder it writes, and how to read its final parameters from a checkpoint's state. For each
entry `kill_resume` runs the script as a subprocess, SIGKILLs it at random moments (one of them
inside a checkpoint write, held open by `SCENE3D_FAULT_SLOW_WRITE`), checks after every kill that
every checkpoint on disk loads and that at most one checkpoint interval of work is lost, resumes,
and finally compares the parameters with an uninterrupted run of the same seed (bitwise: every
script restores model, optimizer, RNG and step exactly, and runs single-threaded on CPU here).

Adding a script: one `ScriptSpec` in `SCRIPTS` (see docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from scene3d.checkpoint import load_checkpoint
from scene3d.runs import RunDir

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ScriptSpec:
    """One training script under the harness.

    argv(out): its tiny configuration writing under the folder `out`; run_dir(out): the run folder
    it then writes; params(state): the tensors compared between runs (from a checkpoint's state);
    checkpoint_every: its checkpoint interval in steps (the most work a kill may lose)."""

    script: str
    argv: Callable[[Path], list[str]]
    run_dir: Callable[[Path], Path]
    params: Callable[[dict], dict[str, torch.Tensor]]
    checkpoint_every: int
    steps: int
    env: dict[str, str] = field(default_factory=dict)


def _flat(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested state, by path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, list | tuple):
        return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f"{prefix}/{i}").items()}
    return {}


def _pick(*keys: str) -> Callable[[dict], dict[str, torch.Tensor]]:
    return lambda state: {k: v for key in keys for k, v in _flat(state[key], key).items()}


SCRIPTS: dict[str, ScriptSpec] = {
    "fit_field": ScriptSpec(
        "scripts/fit_field.py",
        lambda out: ["--field", "mlp", "--output-root", str(out), "--name", "r", "--steps", "30",
                     "--checkpoint-every", "5", "--eval-every", "1000", "--eval-views", "1", "--batch-rays", "64",
                     "--n-samples", "16", "--n-train-views", "4", "--n-test-views", "1", "--image-size", "12",
                     "--turntable-frames", "0", "--occupancy.update-every", "4"],
        lambda out: out / "fields" / "r", _pick("field", "optimizer", "occupancy"), 5, 30),
    "fit_splats": ScriptSpec(
        "scripts/fit_splats.py",
        lambda out: ["--output-root", str(out), "--name", "r", "--steps", "30", "--checkpoint-every", "5",
                     "--eval-every", "1000", "--n-init", "300", "--world-views", "4", "1", "1", "--world-size", "12",
                     "--turntable-frames", "1", "--no-export-mesh", "--no-progress", "--sh-increase-every", "10",
                     "--densify.refine-start", "8", "--densify.refine-stop", "25", "--densify.refine-every", "6",
                     "--densify.reset-every", "20", "--log-every", "1"],
        lambda out: out / "splats" / "r", _pick("scene", "optimizer", "density"), 5, 30),
    "train_avfm": ScriptSpec(
        "scripts/train_avfm.py",
        lambda out: ["--output-root", str(out), "--name", "r", "--steps", "12", "--checkpoint-every", "2",
                     "--batch-size", "2", "--data.source", "toy", "--data.n-train", "8", "--data.n-val", "0",
                     "--data.resolution", "32", "--teacher.name", "random_vit", "--standardizer-scenes", "8",
                     "--log-every", "1", "--no-progress"],
        lambda out: out / "avfm" / "r", _pick("model", "optimizer", "losses"), 2, 12),
    "train_teacher": ScriptSpec(
        "scripts/train_teacher.py",
        lambda out: ["--output-root", str(out), "--name", "r", "--source", "toy", "--n", "16", "--resolution", "64",
                     "--self-supervised.steps", "12", "--self-supervised.batch-size", "4", "--self-supervised.dim",
                     "24", "--self-supervised.depth", "1", "--self-supervised.heads", "2",
                     "--self-supervised.prototypes", "32", "--self-supervised.head-hidden", "32",
                     "--self-supervised.head-bottleneck", "16", "--checkpoint-every", "2", "--log-every", "1",
                     "--no-progress"],
        lambda out: out / "teachers" / "r",
        _pick("model", "teacher", "student", "optimizer", "generator", "center", "patch_center", "losses"), 2, 12),
    "train_prior": ScriptSpec(
        "scripts/train_prior.py",
        lambda out: ["--output-root", str(out), "--name", "r", "--steps", "12", "--checkpoint-every", "2",
                     "--batch-size", "4", "--n-objects-per-class", "1", "--views-per-object", "2", "--log-every", "1",
                     "--sample-every", "0", "--samples-per-class", "1", "--sample-steps", "2",
                     "--prior.resolution", "16", "--prior.block-out-channels", "8", "8",
                     "--prior.layers-per-block", "1", "--prior.norm-num-groups", "4", "--warmup-steps", "2"],
        lambda out: out / "prior" / "r", _pick("model", "ema", "optimizer"), 2, 12),
    "distill_score": ScriptSpec(
        "scripts/distill_score.py",
        lambda out: ["--prior", str(out / "prior" / "r" / "prior"), "--output-root", str(out), "--name", "r",
                     "--guidance", "vsd", "--target", "voxels", "--classifier", str(out / "none"),
                     "--turntable-frames", "2", "--steps", "12", "--checkpoint-every", "2",
                     "--batch-size", "1", "--render-size", "8", "--log-every", "1"],
        lambda out: out / "score" / "r", _pick("targets", "guidance", "estimator_optimizer"), 2, 12),
    "distill_volume": ScriptSpec(
        "scripts/distill_volume.py",
        lambda out: ["--teacher", str(out / "fields" / "r"), "--student", "mlp", "--name", "pvd",
                     "--output-root", str(out), "--steps", "30", "--checkpoint-every", "5", "--eval-every", "1000",
                     "--eval-views", "1", "--batch-rays", "64", "--n-samples", "16", "--epoch-views", "4",
                     "--epoch-steps", "10"],
        lambda out: out / "distill" / "pvd", _pick("field", "adapter", "optimizer"), 5, 30),
    "splat_distill": ScriptSpec(
        "scripts/splat_distill.py",
        lambda out: ["--name", "r", "--output-root", str(out), "--checkpoint-every", "2", "--no-run-probes",
                     "--no-progress", "--worlds.n-distill", "2", "--worlds.n-views", "4", "--worlds.size", "32",
                     "--teacher.name", "random_vit", "--distill.steps", "12", "--distill.batch-size", "1",
                     "--mvs.steps", "4", "--mvs.batch-size", "1"],
        lambda out: out / "splat_distill" / "r", _pick("student", "teacher", "optimizer"), 2, 12),
}
# What a script needs first: (the script that makes it, the folder of that script's run it uses).
# `prepare` runs that script uninterrupted (distill_score needs the tiny prior above, distill_volume
# the tiny field).
PREPARE: dict[str, tuple[str, str]] = {"distill_score": ("train_prior", "prior"),
                                       "distill_volume": ("fit_field", "checkpoints")}


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("SCENE3D_FAULT_SLOW_WRITE", None)
    env.pop("SCENE3D_FAULT_NAN_STEP", None)
    return {**env, **(extra or {})}


def command(spec: ScriptSpec, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / spec.script), *spec.argv(out)]


def run_script(spec: ScriptSpec, out: Path, env: dict[str, str] | None = None, timeout: float = 600,
               preexec_fn=None) -> subprocess.CompletedProcess:
    """Run the script to its end (or its first error)."""
    return subprocess.run(command(spec, out), cwd=ROOT, env=_env({**spec.env, **(env or {})}), capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec_fn, check=False)


def prepare(name: str, out: Path, like: Path | None = None) -> None:
    """Whatever a script needs before it runs (`PREPARE`): copied from the folder `like` when it
    was prepared there, else made by running the script that makes it."""
    if name not in PREPARE:
        return
    need_name, artifact = PREPARE[name]
    need = SCRIPTS[need_name]
    folder = need.run_dir(out) / artifact
    if folder.exists():
        return
    if like is not None and (need.run_dir(like) / artifact).exists():
        shutil.copytree(need.run_dir(like) / artifact, folder)
        return
    done = run_script(need, out)
    if done.returncode != 0:
        raise RuntimeError(f"preparing {name}: {done.stderr[-2000:]}")


def final_params(spec: ScriptSpec, out: Path) -> dict[str, torch.Tensor]:
    """The compared tensors of the run's final checkpoint (which must be at `spec.steps`)."""
    found = RunDir(spec.run_dir(out)).checkpoints()
    if not found or found[-1][0] != spec.steps:
        raise AssertionError(f"{spec.script}: no final checkpoint at step {spec.steps}: {found}")
    state, _ = load_checkpoint(found[-1][1])
    return spec.params(state)


def checkpoints_load(spec: ScriptSpec, out: Path) -> list[int]:
    """Steps of the checkpoints on disk; raises if any of them does not load."""
    steps = []
    for step, path in RunDir(spec.run_dir(out)).checkpoints():
        state, _ = load_checkpoint(path)
        assert int(state["step"]) == step, (path, state["step"])
        steps.append(step)
    return steps


def last_logged_step(spec: ScriptSpec, out: Path) -> int:
    """The highest step in scalars.jsonl (a lower bound of the step a killed run had reached)."""
    import json

    path = spec.run_dir(out) / "scalars.jsonl"
    steps = [0]
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by the kill
    return max(steps)


def progress(spec: ScriptSpec, out: Path) -> int:
    """The furthest step a run has shown: its newest log line or checkpoint."""
    found = RunDir(spec.run_dir(out)).checkpoints() if spec.run_dir(out).is_dir() else []
    return max(last_logged_step(spec, out), found[-1][0] if found else 0)


@dataclass
class KillReport:
    script: str
    kills: int = 0
    kills_in_write: int = 0
    checkpoints_checked: int = 0
    max_repeated_steps: int = 0
    bitwise_equal: bool | None = None
    problems: list[str] = field(default_factory=list)


def _wait_for_tmp(folder: Path, proc: subprocess.Popen, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if any(folder.glob(".step_*.tmp")):
            return True
        time.sleep(0.02)
    return False


def kill_resume(name: str, out: Path, kills: int = 5, seed: int = 0, in_write: int = 1,
                reference: dict[str, torch.Tensor] | None = None, timeout: float = 600) -> KillReport:
    """SIGKILL `name` `kills` times at random moments (`in_write` of them inside a checkpoint
    write), resuming each time, then finish and compare with `reference` (an uninterrupted run's
    `final_params`; computed in `out/reference` when None)."""
    spec, rng, report = SCRIPTS[name], random.Random(seed), KillReport(name)
    prepare(name, out)
    if reference is None:
        ref_out = out / "reference"
        prepare(name, ref_out, like=out)
        done = run_script(spec, ref_out, timeout=timeout)
        if done.returncode != 0:
            report.problems.append(f"uninterrupted run failed: {done.stderr[-1500:]}")
            return report
        reference = final_params(spec, ref_out)
    ckpt_dir = spec.run_dir(out) / "checkpoints"
    started = time.monotonic()
    for k in range(kills):
        in_checkpoint_write = k < in_write
        env = {"SCENE3D_FAULT_SLOW_WRITE": "3"} if in_checkpoint_write else {}
        done_steps = RunDir(spec.run_dir(out)).checkpoints()
        resume_from = done_steps[-1][0] if done_steps else 0
        proc = subprocess.Popen(command(spec, out), cwd=ROOT, env=_env({**spec.env, **env}),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        caught = False
        if in_checkpoint_write:
            caught = _wait_for_tmp(ckpt_dir, proc, timeout)
        else:  # a random step of the remaining work, then a random fraction of a second
            target = rng.randint(min(resume_from + 1, spec.steps - 1), spec.steps - 1)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline and progress(spec, out) < target:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.2))
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.returncode != 0:
                report.problems.append(f"kill {k}: the run failed before the kill: {err[-1500:]}")
            break  # finished before the kill landed: nothing left to interrupt
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
        report.kills += 1
        report.kills_in_write += int(caught)
        try:
            steps = checkpoints_load(spec, out)
            report.checkpoints_checked += len(steps)
        except Exception as err:  # noqa: BLE001 - the property under test
            report.problems.append(f"kill {k}: a checkpoint does not load: {err}")
            break
        repeated = progress(spec, out) - (steps[-1] if steps else 0)
        report.max_repeated_steps = max(report.max_repeated_steps, repeated)
        if repeated > spec.checkpoint_every:
            report.problems.append(f"kill {k}: {repeated} steps would be repeated (interval {spec.checkpoint_every})")
    done = run_script(spec, out, timeout=timeout)
    if done.returncode != 0:
        report.problems.append(f"resumed run failed: {done.stderr[-1500:]}")
        return report
    got = final_params(spec, out)
    report.bitwise_equal = got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in got)
    if not report.bitwise_equal:
        diff = [k for k in got if k not in reference or not torch.equal(got[k], reference[k])][:5]
        report.problems.append(f"resumed parameters differ from the uninterrupted run: {diff}")
    report.seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return report


def file_size_limit(limit_bytes: int) -> Callable[[], None]:
    """A `preexec_fn` capping every file the child writes at `limit_bytes` (a full disk, in effect)."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply
