"""NaN / inf guard for training loops.

    guard = FiniteGuard(mode="stop")        # or "skip" (the `--nonfinite` option of every trainer)
    loss = ...
    if guard.loss(step, loss):               # False: skip this step (mode "skip"); raises in mode "stop"
        loss.backward()
        if guard.gradients(step, model.named_parameters()):
            opt.step()
        guard.parameters(step, model.named_parameters())   # always stops: a NaN weight cannot be skipped
    opt.zero_grad()

In mode "stop" the first non-finite loss, gradient or parameter raises `NonFiniteError` naming the
step, the tensor and the last good checkpoint: the newest one on disk that loads and holds only
finite tensors (the loop raises before its next checkpoint, so that is normally the newest). In
mode "skip" a non-finite loss or gradient skips the optimizer step (a warning on stderr); more than
`max_consecutive_skips` in a row stops the run as in mode "stop".

Fault injection for tests: `SCENE3D_FAULT_NAN_STEP=K` makes the loss of step K NaN.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from scene3d.checkpoint import flatten_state, load_checkpoint
from scene3d.errors import CheckpointError, NonFiniteError

MODES = ("stop", "skip")


def first_nonfinite(named: Iterable[tuple[str, Tensor | None]]) -> str | None:
    """Name of the first tensor holding NaN or inf (one device sync for all of them), else None."""
    items = [(name, t) for name, t in named if t is not None and t.is_floating_point()]
    if not items:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in items])
    if bool(finite.all()):
        return None
    return items[int((~finite).nonzero()[0, 0])][0]


def injected_nan(step: int) -> bool:
    """Whether the fault-injection hook asks for a NaN loss at `step`."""
    value = os.environ.get("SCENE3D_FAULT_NAN_STEP")
    return value is not None and value.strip().isdigit() and int(value) == step


class FiniteGuard:
    """Stops (or skips steps) on non-finite losses, gradients and parameters; counts what it skipped."""

    def __init__(self, mode: str = "stop", checkpoint_dir: str | Path | None = None, max_consecutive_skips: int = 100):
        if mode not in MODES:
            raise ValueError(f"nonfinite mode must be one of {MODES}, got {mode!r}")
        self.mode, self.checkpoint_dir, self.max_consecutive_skips = mode, checkpoint_dir, max_consecutive_skips
        self.skipped: list[int] = []
        self._run = 0

    def _last_checkpoint(self) -> Path | None:
        """The newest checkpoint that loads and holds only finite tensors (None: there is none)."""
        if self.checkpoint_dir is None:
            return None
        for path in sorted(Path(self.checkpoint_dir).glob("step_*.safetensors"), reverse=True):
            try:
                tensors, _ = flatten_state(load_checkpoint(path)[0])
            except CheckpointError:
                continue
            if first_nonfinite(tensors.items()) is None:
                return path
        return None

    def _fail(self, step: int, name: str, kind: str) -> bool:
        if self.mode == "stop" or self._run >= self.max_consecutive_skips:
            raise NonFiniteError(step, name, kind, self._last_checkpoint())
        self._run += 1
        self.skipped.append(step)
        print(f"warning: step {step}: {kind} '{name}' is NaN or infinite; step skipped", file=sys.stderr)
        return False

    def loss(self, step: int, value: Tensor, name: str = "loss") -> bool:
        """True when `value` is finite; else skip (False) or raise. Honours SCENE3D_FAULT_NAN_STEP."""
        if injected_nan(step) or not bool(torch.isfinite(value.detach()).all()):
            return self._fail(step, name, "loss")
        return True

    def gradients(self, step: int, named_parameters: Iterable[tuple[str, Tensor]]) -> bool:
        """True when every gradient is finite; else skip (False) or raise."""
        bad = first_nonfinite((f"{n}.grad", p.grad) for n, p in named_parameters)
        if bad is not None:
            return self._fail(step, bad, "gradient")
        self._run = 0
        return True

    def parameters(self, step: int, named_parameters: Iterable[tuple[str, Tensor]]) -> None:
        """Raise when any parameter is non-finite (in both modes: the weights are already lost)."""
        bad = first_nonfinite((n, p.detach()) for n, p in named_parameters)
        if bad is not None:
            raise NonFiniteError(step, bad, "parameter", self._last_checkpoint())

    def finish(self) -> dict[str, int]:
        return {"nonfinite_skipped_steps": len(self.skipped)}
