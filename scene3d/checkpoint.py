"""Atomic, pickle-free checkpoints: tensors in one safetensors file, everything else as JSON
inside its metadata, so a checkpoint is a single file written by rename (never half-written).

Nested training state (model and optimizer state dicts, RNG states, step counters) is flattened
to `{"a/b/0": tensor}` plus a JSON skeleton, and rebuilt exactly on load.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from scene3d.errors import CheckpointError, OutputError
from scene3d.files import read_bytes

MAX_CHECKPOINT_BYTES = 2**36  # 64 GiB: only regular files up to this size are read as checkpoints
_TENSOR = "__tensor__"
_INT_KEY = re.compile(r"-?[0-9]+")  # dict keys saved from ints (ASCII digits only: "¹".isdigit() is True)
_TUPLE = "__tuple__"


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write `path` via a temporary file in the same folder, fsync, then rename over it.

    A failed write (disk full, file-size limit, folder not writable) leaves `path` as it was and
    raises `OutputError` naming it. Fault injection for tests: `SCENE3D_FAULT_SLOW_WRITE=SECONDS`
    sleeps between writing the temporary file and the rename (a kill then lands mid-write).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if delay := float(os.environ.get("SCENE3D_FAULT_SLOW_WRITE", "0") or 0):
            time.sleep(delay)
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise OutputError(path, None, f"cannot write ({err.strerror or err}); earlier files are intact") from err
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split nested dicts/lists/tuples of tensors and JSON scalars into (tensors, skeleton)."""
    tensors: dict[str, torch.Tensor] = {}

    def visit(x: Any, key: str) -> Any:
        if isinstance(x, torch.Tensor):
            tensors[key] = x.detach().cpu().contiguous()
            return {_TENSOR: key}
        if isinstance(x, dict):
            return {str(k): visit(v, f"{key}/{k}" if key else str(k)) for k, v in x.items()}
        if isinstance(x, tuple):
            return {_TUPLE: [visit(v, f"{key}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [visit(v, f"{key}/{i}") for i, v in enumerate(x)]
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise TypeError(f"cannot checkpoint {type(x).__name__} at '{key}'")

    return tensors, visit(obj, prefix)


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """Inverse of `flatten_state`. Integer-like dict keys of optimizer states are restored.
    A skeleton that does not fit `tensors` raises KeyError / TypeError."""

    def visit(x: Any, depth: int = 0) -> Any:
        if depth > 64:
            raise TypeError("skeleton nested deeper than 64 levels")
        if isinstance(x, dict):
            if set(x) == {_TENSOR}:
                if not isinstance(x[_TENSOR], str):
                    raise TypeError(f"tensor reference must be a string, got {x[_TENSOR]!r}"[:200])
                return tensors[x[_TENSOR]]
            if set(x) == {_TUPLE}:
                if not isinstance(x[_TUPLE], list):
                    raise TypeError("tuple entry must be a list")
                return tuple(visit(v, depth + 1) for v in x[_TUPLE])
            return {(int(k) if _INT_KEY.fullmatch(k) else k): visit(v, depth + 1) for k, v in x.items()}
        if isinstance(x, list):
            return [visit(v, depth + 1) for v in x]
        return x

    return visit(skeleton)


@contextmanager
def restoring(path: str | Path | None, what: str = "state") -> Iterator[None]:
    """Turn the errors of loading a checkpoint's state into a module, an optimizer or a config
    (missing keys, wrong shapes or dtypes) into one `CheckpointError` naming the file."""
    try:
        yield
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError, AttributeError, ArithmeticError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(path, what, f"does not fit this run ({type(err).__name__}: {err})") from None


def save_checkpoint(path: str | Path, state: dict[str, Any], config: dict[str, Any] | None = None) -> Path:
    """Save nested `state` (tensors + JSON scalars) and a JSON `config` atomically to one file."""
    tensors, skeleton = flatten_state(state)
    metadata = {"format": "scene3d-checkpoint-v1", "skeleton": json.dumps(skeleton),
                "config": json.dumps(config or {})}
    data = save_safetensors_bytes(tensors, metadata=metadata)
    return atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Load `(state, config)` from `save_checkpoint`'s file, or raise CheckpointError naming it (also for
    a FIFO, a device or a folder named like a checkpoint, and for files over MAX_CHECKPOINT_BYTES)."""
    path = Path(path)
    raw = read_bytes(path, "file", MAX_CHECKPOINT_BYTES, CheckpointError)
    try:
        metadata = _read_metadata(raw)
        tensors = load_safetensors_bytes(raw)
    except (SafetensorError, ValueError, OSError, KeyError, RecursionError) as err:
        raise CheckpointError(path, "header", f"not a readable safetensors file ({err})") from None
    if metadata.get("format") != "scene3d-checkpoint-v1":
        raise CheckpointError(path, "metadata.format", "missing or unknown checkpoint format")
    for key in ("skeleton", "config"):
        try:
            metadata[key] = json.loads(metadata.get(key, "{}"))
        except (TypeError, ValueError, RecursionError) as err:
            raise CheckpointError(path, f"metadata.{key}", f"malformed JSON ({err})") from None
    if not isinstance(metadata["config"], dict):
        raise CheckpointError(path, "metadata.config", "must be a JSON object")
    try:
        state = unflatten_state({k: v.to(map_location) for k, v in tensors.items()}, metadata["skeleton"])
    except KeyError as err:
        raise CheckpointError(path, f"tensor {err}", "named by the skeleton but missing") from None
    except (TypeError, AttributeError, RecursionError) as err:
        raise CheckpointError(path, "metadata.skeleton", f"malformed ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, "metadata.skeleton", "must describe a JSON object")
    return state, metadata["config"]


def _read_metadata(raw: bytes) -> dict[str, Any]:
    """The safetensors header's `__metadata__` (checked before safetensors parses the file)."""
    if len(raw) < 8:
        raise ValueError("file shorter than the 8-byte header length")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ValueError(f"declared header of {n} bytes is longer than the file")
    header = json.loads(raw[8 : 8 + n])
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("__metadata__ is not a JSON object")
    return dict(metadata)
