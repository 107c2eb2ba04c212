"""JSON files we did not write (transforms.json, camera paths), read with typed, located fields: a
number that must be finite (in float32 where it is used so), a 4x4 rigid pose, a file inside the
document's folder. Every problem is one `DataError` naming the file and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from scene3d.errors import DataError
from scene3d.files import read_text

ORTHONORMAL_TOLERANCE = 1e-3  # max |R^T R - I| of a camera rotation


class JsonDoc:
    """A parsed JSON object file with typed, located field access: every problem is one `DataError`
    naming the file and the field."""

    def __init__(self, path: Path):
        self.path = path
        text = read_text(path, "file")
        try:
            self.data = json.loads(text)
        except json.JSONDecodeError as err:
            where = f"line {err.lineno}, column {err.colno}"
            raise DataError(path, "json", f"malformed JSON ({err.msg} at {where})") from None
        except RecursionError:
            raise DataError(path, "json", "JSON nested too deeply") from None
        if not isinstance(self.data, dict):
            raise DataError(path, "json", f"top level must be a JSON object, got {type(self.data).__name__}")

    def error(self, field: str, problem: str) -> DataError:
        return DataError(self.path, field, problem)

    def number(self, obj: dict, key: str, where: str, default: float | None = None, positive: bool = False) -> float:
        if key not in obj:
            if default is None:
                raise self.error(where, "missing")
            return default
        value = obj[key]
        try:
            finite = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            raise self.error(where, f"must be a finite number, got {str(value)[:100]}")
        if positive and value <= 0:
            raise self.error(where, f"must be positive, got {value}")
        return float(value)

    def matrix(self, obj: dict, key: str, where: str) -> torch.Tensor:
        if key not in obj:
            raise self.error(where, "missing")
        try:
            m = np.asarray(obj[key], dtype=np.float64)
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise self.error(where, "must be a 4x4 array of numbers") from None
        if m.shape == (3, 4):
            m = np.concatenate([m, [[0, 0, 0, 1]]])
        if m.shape != (4, 4):
            raise self.error(where, f"must be a 4x4 array of numbers, got shape {m.shape}")
        with np.errstate(over="ignore"):
            m = m.astype(np.float32)  # the dtype every computation uses: checked after the conversion
        if not np.isfinite(m).all():
            raise self.error(where, "contains NaN or infinity (in float32)")
        if np.abs(m[3] - [0, 0, 0, 1]).max() > 1e-6:
            raise self.error(where, f"last row must be 0 0 0 1 (a rigid camera pose), got {m[3].tolist()}")
        rotation = m[:3, :3].astype(np.float64)
        error = np.abs(rotation.T @ rotation - np.eye(3)).max()
        if error > ORTHONORMAL_TOLERANCE or np.linalg.det(rotation) < 0:
            kind = "a mirror" if np.linalg.det(rotation) < 0 else f"off by {error:.2g}"
            raise self.error(where, f"rotation part must be orthonormal with determinant +1 (no scale, shear or "
                             f"mirror); it is {kind}")
        return torch.from_numpy(m)

    def file(self, obj: dict, key: str, where: str, suffixes: tuple[str, ...] = ("",)) -> Path:
        """A file path named by `obj[key]`, relative to the JSON's folder, that must exist inside it."""
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            raise self.error(where, f"must be a non-empty path string, got {value!r}"[:200])
        root = self.path.parent.resolve()
        shown = value[:200]
        for suffix in suffixes:
            try:
                candidate = (root / (value + suffix)).resolve()
                if not candidate.is_relative_to(root):
                    raise self.error(where, f"path '{shown}' points outside the dataset folder")
                if candidate.is_file():
                    return candidate
                if candidate.exists():
                    raise DataError(candidate, where, "is not a regular file")
            except (ValueError, OSError, RuntimeError) as err:  # NUL bytes, names too long, symlink loops
                if isinstance(err, DataError):
                    raise
                raise self.error(where, f"unusable path '{shown}' ({err})") from None
        raise DataError(self.path.parent / shown, where, "file does not exist")
