"""Run directories: `outputs/<kind>/<name>/` with the config (JSON + YAML), metrics JSON, PNG
plots, TensorBoard logs and rotating atomic checkpoints with resume."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from scene3d.checkpoint import atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint
from scene3d.errors import CheckpointError, OutputError

Loaded = TypeVar("Loaded")

OUTPUTS = Path("outputs")
_CKPT = re.compile(r"step_(\d+)\.safetensors$")


def config_to_dict(config: Any) -> Any:
    """A (nested) dataclass as plain JSON-able data; Paths become strings, tuples lists."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {str(k): config_to_dict(v) for k, v in config.items()}
    if isinstance(config, list | tuple):
        return [config_to_dict(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    return config


def checkpoint_files(run_path: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of a run folder's `checkpoints/step_*.safetensors`, oldest first (creates nothing)."""
    folder = Path(run_path) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.safetensors") if (m := _CKPT.search(p.name))]
    return sorted(found)


def newest_loadable(run_path: str | Path, load: Callable[[Path], Loaded] = load_checkpoint
                    ) -> tuple[Path, Loaded] | None:
    """`(path, load(path))` for the newest checkpoint of a run folder that loads, None when it has none.
    A newer one that does not load (damaged after it was written) is reported on stderr and skipped;
    when none loads, the newest one's `CheckpointError` is raised. Changes nothing on disk, so the
    viewer uses it on runs still training."""
    first_error = None
    for _, path in reversed(checkpoint_files(run_path)):
        try:
            return path, load(path)
        except CheckpointError as err:
            first_error = first_error or err
            print(f"warning: skipping unreadable checkpoint: {err}", file=sys.stderr)
    if first_error is not None:
        raise first_error
    return None


class RunDir:
    """One run's folder. Checkpoints are `checkpoints/step_XXXXXXX.safetensors`, newest kept."""

    def __init__(self, path: str | Path, keep_checkpoints: int = 2):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(self.path, None, f"cannot create the run folder ({err.strerror or err})") from None
        self.keep_checkpoints = keep_checkpoints
        self._writer = None
        self._purge_step: int | None = None

    @classmethod
    def create(cls, kind: str, name: str, root: str | Path = OUTPUTS, **kwargs) -> RunDir:
        return cls(Path(root) / kind / name, **kwargs)

    def file(self, *parts: str) -> Path:
        p = self.path.joinpath(*parts)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(p.parent, None, f"cannot create folder ({err.strerror or err})") from None
        return p

    def save_config(self, config: Any) -> None:
        data = config_to_dict(config)
        atomic_write_json(self.file("config.json"), data)
        atomic_write_text(self.file("config.yaml"), yaml.safe_dump(data, sort_keys=False))

    def save_metrics(self, metrics: dict[str, Any], name: str = "metrics.json") -> Path:
        return atomic_write_json(self.file(name), {**metrics, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """TensorBoard scalars plus a JSON-lines copy (`scalars.jsonl`) that the viewer tails."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.path / "tb"), purge_step=self._purge_step)
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)
        path = self.file("scalars.jsonl")
        try:
            with open(path, "a") as f:
                f.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
        except OSError as err:
            raise OutputError(path, None, f"cannot append ({err.strerror or err})") from None

    def scalars_bytes(self) -> int:
        """The length of `scalars.jsonl` now (0 when there is none); a checkpoint records it."""
        path = self.path / "scalars.jsonl"
        return path.stat().st_size if path.is_file() else 0

    def continue_logs(self, step: int, scalars_bytes: int | None) -> None:
        """Logs go on from `step` (0: a fresh start): `scalars.jsonl` is cut back to the `scalars_bytes`
        it held when that step's checkpoint was written (None: lines of later steps dropped), and
        TensorBoard discards the events of later steps, so no line is logged twice across resumes."""
        path = self.path / "scalars.jsonl"
        self._purge_step = step + 1
        if not path.is_file():
            return
        try:
            if scalars_bytes is not None:
                if scalars_bytes < path.stat().st_size:
                    os.truncate(path, scalars_bytes)
                return
            kept = [line for line in path.read_text(errors="replace").splitlines(keepends=True)
                    if line.endswith("\n") and (logged := _logged_step(line)) is not None and logged <= step]
            atomic_write_text(path, "".join(kept))
        except OSError as err:
            raise OutputError(path, None, f"cannot cut back to step {step} ({err.strerror or err})") from None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # checkpoints ---------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        return checkpoint_files(self.path)

    def save_checkpoint(self, step: int, state: dict[str, Any], config: Any = None) -> Path:
        path = save_checkpoint(self.file("checkpoints", f"step_{step:07d}.safetensors"),
                               {**state, "step": step}, config_to_dict(config) if config is not None else None)
        for _, old in self.checkpoints()[: -self.keep_checkpoints]:
            old.unlink(missing_ok=True)
        return path

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def remove_killed_writes(self) -> None:
        """Remove the temporary files of checkpoint writes that were killed."""
        for tmp in (self.path / "checkpoints").glob(".step_*.tmp"):
            tmp.unlink(missing_ok=True)

    def load_latest(self, map_location: str = "cpu") -> tuple[dict, dict] | None:
        """The newest checkpoint that loads (state, config), or None when there is none (see
        `newest_loadable`); leftover temporary files of a killed write are removed first."""
        self.remove_killed_writes()
        found = newest_loadable(self.path, lambda path: load_checkpoint(path, map_location))
        return None if found is None else found[1]


def _logged_step(line: str) -> int | None:
    """The step of one scalars.jsonl line (None: not a record)."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None
