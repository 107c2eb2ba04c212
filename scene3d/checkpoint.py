"""Atomic, pickle-free checkpoints: tensors in one safetensors file, everything else as JSON
inside its metadata, so a checkpoint is a single file written by rename (never half-written).

Nested training state (model and optimizer state dicts, RNG states, step counters) is flattened
to `{"a/b/0": tensor}` plus a JSON skeleton, and rebuilt exactly on load.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from scene3d.errors import CheckpointError

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write `path` via a temporary file in the same folder, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
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
    """Inverse of `flatten_state`. Integer-like dict keys of optimizer states are restored."""

    def visit(x: Any) -> Any:
        if isinstance(x, dict):
            if set(x) == {_TENSOR}:
                return tensors[x[_TENSOR]]
            if set(x) == {_TUPLE}:
                return tuple(visit(v) for v in x[_TUPLE])
            return {(int(k) if k.lstrip("-").isdigit() else k): visit(v) for k, v in x.items()}
        if isinstance(x, list):
            return [visit(v) for v in x]
        return x

    return visit(skeleton)


def save_checkpoint(path: str | Path, state: dict[str, Any], config: dict[str, Any] | None = None) -> Path:
    """Save nested `state` (tensors + JSON scalars) and a JSON `config` atomically to one file."""
    tensors, skeleton = flatten_state(state)
    metadata = {"format": "scene3d-checkpoint-v1", "skeleton": json.dumps(skeleton),
                "config": json.dumps(config or {})}
    data = save_safetensors_bytes(tensors, metadata=metadata)
    return atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Load `(state, config)` from `save_checkpoint`'s file, or raise CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, None, "checkpoint file does not exist")
    raw = path.read_bytes()
    try:
        tensors = load_safetensors_bytes(raw)
        metadata = _read_metadata(raw)
    except (SafetensorError, ValueError, OSError, KeyError) as err:
        raise CheckpointError(path, None, f"not a readable safetensors file ({err})") from None
    if metadata.get("format") != "scene3d-checkpoint-v1":
        raise CheckpointError(path, "metadata.format", "missing or unknown checkpoint format")
    try:
        skeleton = json.loads(metadata["skeleton"])
        config = json.loads(metadata.get("config", "{}"))
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(path, "metadata.skeleton", f"malformed ({err})") from None
    try:
        state = unflatten_state({k: v.to(map_location) for k, v in tensors.items()}, skeleton)
    except KeyError as err:
        raise CheckpointError(path, f"tensor {err}", "named by the skeleton but missing") from None
    return state, config


def _read_metadata(raw: bytes) -> dict[str, str]:
    if len(raw) < 8:
        raise ValueError("file shorter than the 8-byte header length")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ValueError("declared header longer than the file")
    header = json.loads(raw[8 : 8 + n])
    return header.get("__metadata__", {}) or {}
