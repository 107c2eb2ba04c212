"""The one training loop: every training job is a `Trainable`, and `fit(trainable, run, config, steps)`
drives it.

    trainer = FieldTrainer(...)                       # any Trainable
    run = RunDir.create("fields", "my_run")           # or None: in memory, no checkpoints or logs
    result = fit(trainer, run, job_config.run, job_config.steps, job_config=job_config)

`fit` owns what every job needs the same way:

- the run folder and exact resume: the newest checkpoint that loads is restored (the trainable's state
  plus the loop's step, evaluation timeline and training seconds), and a killed run resumed ends with
  the same parameters as an uninterrupted one, because every trainable restores its RNG states;
  `scalars.jsonl` and TensorBoard are cut back to that checkpoint, so no step is logged twice;
- the run's identity: a checkpoint records the job's configuration and the fingerprint of its input
  files (`run_identity`), and resuming with another identity is refused in one line naming the first
  field that differs; a fresh start (`resume` off) moves the folder's checkpoints and scalars to
  `checkpoints/replaced/`, so no rotation or resume mixes two runs; a checkpoint whose step, loop state
  or parameters (NaN / inf) do not fit is refused in one line;
- the NaN/inf guard (`scene3d.guard`): loss, gradients and parameters checked every step;
- the cadence: scalars every `log_every` steps, validation every `eval_every` steps and at the last step
  (its time paused out of the training seconds), a checkpoint every `checkpoint_every` steps, at the
  last step and whenever a limit ends the invocation; a checkpoint is written before its step's
  validation, so a crash in evaluation keeps it (the resumed run validates that step first);
- the limits: `steps` (the schedule's length), `stop_after` steps or `max_minutes` of training in this
  invocation (a limit ends it with a checkpoint; rerunning continues);
- a progress bar, and `metrics.json`: the trainable's final metrics plus steps, training seconds and the
  validation timeline.

Steps are counted from 1: `loss(step)` computes step `step`, after which `step` steps are done, and
the checkpoint written then is `step_<step>`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from scene3d.checkpoint import restoring
from scene3d.config import Range, check
from scene3d.errors import CheckpointError, ConfigError
from scene3d.files import fingerprint
from scene3d.guard import FiniteGuard, first_nonfinite
from scene3d.runs import OUTPUTS, RunDir, config_to_dict, newest_loadable
from scene3d.timing import Stopwatch


@dataclass
class RunConfig:
    """Where a run lives and how its loop is paced; composed into every job's config (`--name`,
    `--output-root`, `--checkpoint-every`, ... on every script)."""

    name: str | None = None  # the run folder's name under <output_root>/<kind>/; None: the job's default name
    output_root: Path = OUTPUTS
    resume: bool = True  # continue from the run folder's newest checkpoint (refused if it is another run's)
    log_every: Annotated[int, Range(1)] = 50  # scalars to TensorBoard and scalars.jsonl, and the progress bar's
    eval_every: Annotated[int, Range(0)] = 500  # validation every this many steps and at the last step; 0: never
    checkpoint_every: Annotated[int, Range(1)] = 500  # checkpoints every this many steps, at the last one, at limits
    keep_checkpoints: Annotated[int, Range(1)] = 2  # the newest this many checkpoints are kept
    stop_after: Annotated[int | None, Range(1)] = None  # end this invocation after this many steps (a checkpoint)
    max_minutes: Annotated[float | None, Range(0, above=True)] = None  # end it after this many minutes of training
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN / inf loss, gradient or parameter: stop naming it, or skip
    progress: bool = True  # a progress bar on stderr

    def __post_init__(self) -> None:
        check(self)
        if self.name is not None and (self.name in ("", ".", "..") or any(c in self.name for c in "/\\\0")):
            raise ConfigError("--name", f"must be a plain folder name, got {self.name!r}")

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
    """What makes a run what it is: the fields of its job config but the loop's pacing (`run`), the
    schedule's length (`steps`: a run may be continued for longer) and the device, plus under "inputs"
    the `scene3d.files.fingerprint` of every file or folder a `Path` field names (its data, a teacher)."""
    data = config_to_dict(config)
    if not isinstance(data, dict):
        return {"config": data}
    identity = {k: v for k, v in data.items() if k not in set(ignore)}
    inputs = {name: fingerprint(path) for name, path in _input_paths(config, set(ignore))}
    return {**identity, "inputs": inputs} if inputs else identity


def _input_paths(config: Any, ignore: set[str], prefix: str = "") -> Iterator[tuple[str, Path]]:
    """(dotted field name, path) of every `Path` field of a (nested) dataclass config."""
    if not dataclasses.is_dataclass(config):
        return
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in ignore:
            continue
        if isinstance(value, Path):
            yield prefix + f.name, value
        else:
            yield from _input_paths(value, set(), f"{prefix}{f.name}.")


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


def _replace_other_run(run: RunDir) -> None:
    """A fresh start in a folder holding another run (`resume` off): its checkpoints and scalars.jsonl
    move to `checkpoints/replaced/` (an earlier replaced set is dropped), so the new run's checkpoints
    are never rotated away by them, the new run never resumes them and its logs start empty."""
    found = [path for _, path in run.checkpoints()]
    if (run.path / "scalars.jsonl").is_file():
        found.append(run.path / "scalars.jsonl")
    if not found:
        return
    folder = run.path / "checkpoints" / "replaced"
    if folder.is_dir():
        for old in [*folder.glob("step_*.safetensors"), folder / "scalars.jsonl"]:
            old.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    for path in found:
        path.replace(folder / path.name)


def _resume(trainable: Trainable, run: RunDir, identity: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    """Restore the newest checkpoint that loads into `trainable`: (its step, the loop's state saved with
    it), or (0, {}) when there is none. A checkpoint of another run (identity), one whose step or loop
    state does not fit, or whose parameters are not finite is one `CheckpointError`."""
    run.remove_killed_writes()
    found = newest_loadable(run.path)
    if found is None:
        return 0, {}
    path, (state, _) = found
    with restoring(path, "loop"):
        loop = state.get("loop", {})
        saved_identity = loop.get("identity")
        if identity is not None and saved_identity is not None and json.loads(saved_identity) != identity:
            why = _first_difference(json.loads(saved_identity), identity) or "the configuration differs"
            raise CheckpointError(path, "identity", f"belongs to another run ({why}); choose another --name, or "
                                  "--no-resume to start this one afresh")
        step, named = state.get("step"), int(path.stem.removeprefix("step_"))
        if isinstance(step, bool) or not isinstance(step, int) or step != named:  # 4.0 is not a step
            raise CheckpointError(path, "step", f"must be {named}, the step in the file's name; got {step!r}"[:300])
        wall, cpu = (float(v) for v in loop.get("elapsed", (0.0, 0.0)))
        scalars_bytes = loop.get("scalars_bytes")
        if not (math.isfinite(wall) and math.isfinite(cpu) and wall >= 0 and cpu >= 0) or not (
                scalars_bytes is None or (isinstance(scalars_bytes, int) and scalars_bytes >= 0)):
            raise ValueError("elapsed seconds or scalars_bytes out of range")
        loop = {**loop, "timeline": [dict(entry) for entry in loop.get("timeline", [])], "elapsed": (wall, cpu)}
    with restoring(path, "training state"):
        trainable.load_state_dict(state)
    if (bad := first_nonfinite(trainable.guarded_parameters())) is not None:
        raise CheckpointError(path, bad, "holds NaN or infinite values; delete this checkpoint to resume from an "
                              "earlier one, or --no-resume to start afresh")
    return step, loop


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
    start, loop = 0, {}
    if run is not None and config.resume:
        start, loop = _resume(trainable, run, identity)
    elif writer is not None:
        _replace_other_run(writer)
    timeline: list[dict[str, float]] = loop.get("timeline", [])
    elapsed = loop.get("elapsed", (0.0, 0.0))
    if writer is not None:
        writer.keep_checkpoints = config.keep_checkpoints
        writer.continue_logs(start, loop.get("scalars_bytes", None if start else 0))
        if job_config is not None:
            writer.save_config(job_config)
    clock = Stopwatch(*elapsed)

    def checkpoint(step: int, eval_pending: bool) -> None:
        """Written before the step's validation (`eval_pending`), so a crash in evaluation keeps it."""
        if writer is None:
            return
        with clock.paused() as now:
            loop = {"identity": identity_json, "timeline": timeline, "elapsed": [now.wall_s, now.cpu_s],
                    "scalars_bytes": writer.scalars_bytes(), "eval_pending": eval_pending}
            writer.save_checkpoint(step, {**trainable.state_dict(), "loop": loop}, trainable.checkpoint_config())

    def validate(step: int) -> None:
        with clock.paused() as now:
            metrics = trainable.validate()
        if metrics:
            timeline.append({"step": step, "seconds": now.wall_s, "cpu_seconds": now.cpu_s, **metrics})
            if writer is not None:
                writer.log_scalars(step, _scalars(metrics, "test"))

    if loop.get("eval_pending") is True:  # the resumed checkpoint's validation did not finish before the stop
        validate(start)
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
        due = bool(config.eval_every) and (step % config.eval_every == 0 or step == steps)
        out_of_time = minutes_left is not None and clock.read().wall_s - elapsed[0] > 60 * minutes_left
        if step % config.checkpoint_every == 0 or step in (steps, last) or out_of_time:
            checkpoint(step, eval_pending=due)
        if due:
            validate(step)
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
