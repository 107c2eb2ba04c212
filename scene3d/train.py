"""The one training loop: every training job is a `Trainable`, and `fit(trainable, run, config, steps)`
drives it.

    trainer = FieldTrainer(...)                       # any Trainable
    run = RunDir.create("fields", "my_run")           # or None: in memory, no checkpoints or logs
    result = fit(trainer, run, job_config.run, job_config.steps, job_config=job_config)

`fit` owns what every job needs the same way:

- the run folder and exact resume: the newest checkpoint that loads is restored (the trainable's state
  plus the loop's step, evaluation timeline and training seconds), and a killed run resumed ends with
  the same parameters as an uninterrupted one, because every trainable restores its RNG states;
- the run's identity: a checkpoint records the job's configuration, and resuming with another
  configuration is refused in one line naming the first field that differs;
- the NaN/inf guard (`scene3d.guard`): loss, gradients and parameters checked every step;
- the cadence: scalars every `log_every` steps, validation every `eval_every` steps and at the last step
  (its time paused out of the training seconds), a checkpoint every `checkpoint_every` steps, at the
  last step and whenever a limit ends the invocation;
- the limits: `steps` (the schedule's length), `stop_after` steps or `max_minutes` of training in this
  invocation (a limit ends it with a checkpoint; rerunning continues);
- a progress bar, and `metrics.json`: the trainable's final metrics plus steps, training seconds and the
  validation timeline.

Steps are counted from 1: `loss(step)` computes step `step`, after which `step` steps are done, and
the checkpoint written then is `step_<step>`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from scene3d.checkpoint import restoring
from scene3d.errors import CheckpointError
from scene3d.guard import FiniteGuard
from scene3d.runs import OUTPUTS, RunDir, config_to_dict
from scene3d.timing import Stopwatch


@dataclass
class RunConfig:
    """Where a run lives and how its loop is paced; composed into every job's config (`--name`,
    `--output-root`, `--checkpoint-every`, ... on every script)."""

    name: str | None = None  # the run folder's name under <output_root>/<kind>/; None: the job's default name
    output_root: Path = OUTPUTS
    resume: bool = True  # continue from the run folder's newest checkpoint (refused if it is another run's)
    log_every: int = 50  # scalars to TensorBoard and scalars.jsonl, and the progress bar's numbers
    eval_every: int = 500  # validation every this many steps and at the last step; 0: never
    checkpoint_every: int = 500  # checkpoints every this many steps, at the last one and when a limit stops
    keep_checkpoints: int = 2  # the newest this many checkpoints are kept
    stop_after: int | None = None  # end this invocation after this many steps (a checkpoint is written)
    max_minutes: float | None = None  # end this invocation after this many minutes of training
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN / inf loss, gradient or parameter: stop naming it, or skip
    progress: bool = True  # a progress bar on stderr

    def open(self, kind: str, default_name: str) -> RunDir:
        """The run folder `<output_root>/<kind>/<name or default_name>/`."""
        return RunDir.create(kind, self.name or default_name, root=self.output_root)


class Trainable(Protocol):
    """One training job, as `fit` drives it. A step is `loss` -> backward -> `apply`: the loop checks
    the loss, runs the backward pass (unless the trainable already did, as truncated BPTT does: then
    `loss` returns a tensor without grad), checks the gradients of `guarded_parameters`, and calls
    `apply` only when they are finite."""

    name: str  # a label for the progress bar

    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        """The forward pass of step `step` (from 1): the loss to minimise and scalars to log.
        Gradients from earlier steps are cleared here."""

    def guarded_parameters(self) -> Iterable[tuple[str, Tensor]]:
        """The (name, parameter) pairs whose gradients and values the NaN/inf guard checks."""

    def apply(self, step: int) -> dict[str, float]:
        """The update after a finite backward pass (optimizer step, EMA, densification); extra scalars."""

    def validate(self) -> dict[str, float]:
        """Held-out metrics during training ({} when there are none)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs (parameters, optimizer, RNG states)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; errors become one CheckpointError naming the file."""

    def checkpoint_config(self) -> dict[str, Any]:
        """JSON saved in every checkpoint beside the state (what a reader needs to rebuild the model)."""

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        """After the last step: final evaluation and artifacts (renders, exports); the final metrics.
        `result`: what the loop did (steps, this invocation's steps, training seconds, the timeline)."""


@dataclass
class FitResult:
    """What `fit` did: `complete` when the schedule reached `steps` (else a limit ended the invocation)."""

    steps: int
    steps_this_run: int
    complete: bool
    train_seconds: float
    train_cpu_seconds: float
    timeline: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # what metrics.json holds (complete runs)
    skipped_steps: list[int] = field(default_factory=list)


def run_identity(config: Any, ignore: Iterable[str] = ("run", "steps", "device")) -> dict[str, Any]:
    """The fields of a job config that make a run what it is: all but the loop's pacing (`run`), the
    schedule's length (`steps`: a run may be continued for longer) and the device."""
    data = config_to_dict(config)
    return {k: v for k, v in data.items() if k not in set(ignore)} if isinstance(data, dict) else {"config": data}


def _first_difference(saved: Any, now: Any, path: str = "") -> str | None:
    if isinstance(saved, dict) and isinstance(now, dict):
        for key in list(saved) + [k for k in now if k not in saved]:
            found = _first_difference(saved.get(key), now.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if saved == now else f"'{path}' is {json.dumps(saved)} there, {json.dumps(now)} now"


def train_step(trainable: Trainable, step: int, guard: FiniteGuard) -> dict[str, float]:
    """One guarded step (loss, backward, gradient check, apply, parameter check); what `fit` runs
    every step, and what benchmarks call in their own timed loops."""
    loss, logs = trainable.loss(step)
    if guard.loss(step, loss):
        if loss.requires_grad:
            loss.backward()
        if guard.gradients(step, trainable.guarded_parameters()):
            logs = {**logs, **trainable.apply(step)}
        guard.parameters(step, trainable.guarded_parameters())
    else:
        logs = {**logs, "loss": float("nan")}
    return logs


class Stepper:
    """Steps a trainable by hand, outside `fit` (benchmarks with their own clocks, tests):
    `stepper()` runs the next step under its own guard and returns its scalars; `stepper.step` counts
    the steps done (set it after restoring a checkpoint)."""

    def __init__(self, trainable: Trainable, nonfinite: Literal["stop", "skip"] = "stop", step: int = 0):
        self.trainable, self.step, self.guard = trainable, step, FiniteGuard(nonfinite)

    def __call__(self) -> dict[str, float]:
        self.step += 1
        return train_step(self.trainable, self.step, self.guard)


def _scalars(logs: dict[str, Any], prefix: str) -> dict[str, float]:
    """Numbers of a log dict as TensorBoard scalars; keys with a '/' keep their own group."""
    return {(k if "/" in k else f"{prefix}/{k}"): float(v) for k, v in logs.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def _replace_other_checkpoints(run: RunDir) -> None:
    """A fresh start in a folder holding checkpoints (`resume` off): they move to `checkpoints/replaced/`
    (an earlier replaced set is dropped), so the new run's checkpoints are never rotated away by them and
    the new run never resumes them."""
    found = run.checkpoints()
    if not found:
        return
    folder = run.path / "checkpoints" / "replaced"
    if folder.is_dir():
        for old in folder.glob("step_*.safetensors"):
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for _, path in found:
        path.replace(folder / path.name)


def fit(trainable: Trainable, run: RunDir | None, config: RunConfig, steps: int, *,
        job_config: Any = None, main_process: bool = True) -> FitResult:
    """Train `trainable` to `steps` in `run` (None: in memory), resuming its newest checkpoint when
    `config.resume`; returns what happened. `job_config`: the job's whole configuration, saved as the
    run's config.json once its identity (`run_identity`) matches a resumed checkpoint's. Writes
    `metrics.json` when the schedule completes. `main_process` False (DDP ranks > 0): nothing is written."""
    writer = run if main_process else None
    guard = FiniteGuard(config.nonfinite, None if run is None else run.path / "checkpoints")
    identity = None if job_config is None else run_identity(job_config)
    identity_json = json.dumps(identity if identity is not None else {}, sort_keys=True)
    start, timeline, elapsed = 0, [], (0.0, 0.0)
    if run is not None and config.resume and (loaded := run.load_latest()) is not None:
        state, _ = loaded
        path = run.latest_checkpoint()
        loop = state.get("loop", {})
        saved_identity = loop.get("identity")
        if identity is not None and saved_identity is not None and saved_identity != identity_json:
            why = _first_difference(json.loads(saved_identity), identity) or "the configuration differs"
            raise CheckpointError(path, "identity", f"belongs to another run ({why}); choose another --name, or "
                                  "--no-resume to start this one afresh")
        with restoring(path, "training state"):
            trainable.load_state_dict(state)
            start = int(state["step"])
            timeline = [dict(entry) for entry in loop.get("timeline", [])]
            elapsed = tuple(loop.get("elapsed", elapsed))
    elif writer is not None and not config.resume:
        _replace_other_checkpoints(writer)
    if writer is not None:
        writer.keep_checkpoints = config.keep_checkpoints
        if job_config is not None:
            writer.save_config(job_config)
    clock = Stopwatch(*elapsed)

    def checkpoint(step: int) -> None:
        if writer is None:
            return
        with clock.paused() as now:
            loop = {"identity": identity_json, "timeline": timeline, "elapsed": [now.wall_s, now.cpu_s]}
            writer.save_checkpoint(step, {**trainable.state_dict(), "loop": loop}, trainable.checkpoint_config())

    last = steps if config.stop_after is None else min(steps, start + config.stop_after)
    bar = tqdm(total=steps, initial=start, desc=trainable.name, disable=not (config.progress and main_process),
               dynamic_ncols=True)
    step, minutes_left = start, config.max_minutes
    while step < last:
        step += 1
        logs = train_step(trainable, step, guard)
        bar.update(1)
        if step % config.log_every == 0 or step == steps:
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(logs.items())[:2]})
            if writer is not None:
                writer.log_scalars(step, _scalars(logs, "train"))
        if config.eval_every and (step % config.eval_every == 0 or step == steps):
            with clock.paused() as now:
                metrics = trainable.validate()
            if metrics:
                timeline.append({"step": step, "seconds": now.wall_s, "cpu_seconds": now.cpu_s, **metrics})
                if writer is not None:
                    writer.log_scalars(step, _scalars(metrics, "test"))
        out_of_time = minutes_left is not None and clock.read().wall_s - elapsed[0] > 60 * minutes_left
        if step % config.checkpoint_every == 0 or step in (steps, last) or out_of_time:
            checkpoint(step)
        if out_of_time:
            break
    bar.close()
    trained = clock.read()
    result = FitResult(step, step - start, step >= steps, trained.wall_s, trained.cpu_s, timeline,
                       skipped_steps=guard.skipped)
    if result.complete:
        final = trainable.finish(writer, result)
        result.metrics = {**final, "steps": step, "train_seconds": trained.wall_s,
                          "train_cpu_seconds": trained.cpu_s, "threads": torch.get_num_threads(),
                          "timeline": timeline, **guard.finish()}
        if writer is not None:
            writer.save_metrics(result.metrics)
    if writer is not None:
        writer.close()
    return result


def seconds_to_reach(timeline: list[dict[str, float]], key: str, value: float, clock: str = "seconds") -> float | None:
    """Training seconds (`clock`: "seconds" wall or "cpu_seconds") at the first validation whose `key`
    reached `value` (None: never)."""
    return next((entry[clock] for entry in timeline if entry.get(key, -math.inf) >= value), None)
