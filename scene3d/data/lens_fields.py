"""The lens fields of a nerfstudio `transforms.json`: `camera_model` and the distortion keys.

As nerfstudio's dataparser: a frame's own value wins over the top-level one; without `camera_model` the
camera is a perspective one reading k1..k4, p1, p2 (nerfstudio's PERSPECTIVE type). Models are those of
`scene3d.camera_models.MODELS`; any other model, and any non-zero distortion key a model does not
have (k5, s1, omega, k4 with OPENCV, p1 with a fisheye...), is a `DataError` naming the field.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor

from scene3d.camera_models import DISTORTION_KEYS, MODELS, distortion_vector
from scene3d.errors import DataError

# keys that carry a lens parameter in COLMAP / OpenCV / nerfstudio files
_LENS_KEY = re.compile(r"^(k\d+|p\d+|s\d+|omega)$")
_PERSPECTIVE = ("PINHOLE", DISTORTION_KEYS)  # nerfstudio without camera_model: k1..k4, p1, p2 are read


def frame_lens(path: Any, top: dict, frame: dict, where: str) -> tuple[str, Tensor]:
    """(lens, distortion [6]) of one frame of the file at `path`; `where` names the frame (`frames[3]`)."""
    in_frame = "camera_model" in frame
    model = frame["camera_model"] if in_frame else top.get("camera_model")
    field = f"{where}.camera_model" if in_frame else "camera_model"
    if model is None:
        lens, allowed = _PERSPECTIVE
    elif isinstance(model, str) and model in MODELS:
        lens, allowed = MODELS[model]
    else:
        raise DataError(path, field, f"unsupported camera model {str(model)[:60]!r}; supported: {', '.join(MODELS)}")
    values: dict[str, float] = {}
    for src, prefix in ((top, ""), (frame, f"{where}.")):
        for key, value in src.items():
            if not isinstance(key, str) or not _LENS_KEY.match(key):
                continue
            try:
                ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
            except OverflowError:
                ok = False
            if not ok:
                raise DataError(path, prefix + key, f"must be a finite number, got {str(value)[:100]}")
            if key not in allowed:
                if value != 0:
                    raise DataError(path, prefix + key, f"distortion key not supported by camera model "
                                    f"{model or 'none'} (it has {', '.join(allowed) or 'no distortion'})")
                continue
            values[key] = float(value)
    dist = distortion_vector(values)
    if model is None and dist.any():
        lens = "OPENCV"
    return lens, dist


def lens_fields(cameras_lens: str, distortion: Tensor) -> dict[str, Any]:
    """transforms.json fields for one camera: `camera_model` and its non-trivial distortion keys."""
    if cameras_lens == "PINHOLE":
        return {"camera_model": "PINHOLE"}
    model: str | None = cameras_lens
    if cameras_lens == "OPENCV" and distortion[DISTORTION_KEYS.index("k4")] != 0:
        model = None  # an r^8 term: only nerfstudio's model-less perspective camera reads k4
    keys = DISTORTION_KEYS if model is None else MODELS[cameras_lens][1]
    head = {} if model is None else {"camera_model": model}
    return {**head, **{k: float(distortion[DISTORTION_KEYS.index(k)]) for k in keys}}


def stack_lenses(path: Any, lenses: list[tuple[str, str, Tensor]]) -> tuple[str, Tensor | None]:
    """One lens for the whole dataset from (where, lens, distortion [6]) per frame -> (lens, [N,6] or None)."""
    first = lenses[0][1]
    for where, kind, _ in lenses:
        if kind != first:
            raise DataError(path, f"{where}.camera_model", f"lens {kind} differs from the first frame's {first}; "
                            "one dataset holds one lens model")
    return first, (None if first == "PINHOLE" else torch.stack([d for _, _, d in lenses]))
