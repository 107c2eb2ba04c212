"""The standard 3DGS PLY layout (Kerbl et al. 2023), as read by common splat viewers.

One `vertex` element, binary little endian, float32 properties in this order:
    x y z  nx ny nz  f_dc_0..2  f_rest_0..(3(K-1)-1)  opacity  scale_0..2  rot_0..3
f_dc / f_rest are SH coefficients stored channel-major (all R coefficients, then G, then B),
opacity is the logit, scales are logs, rot is the quaternion wxyz (unnormalised).
Feature scenes add `feat_0..D-1` after the standard block and store zero colour, so viewers open them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from scene3d.checkpoint import atomic_write
from scene3d.errors import DataError
from scene3d.gaussians.scene import GaussianScene
from scene3d.plyfile import read_ply_elements, read_ply_kind


def _columns(scene: GaussianScene) -> dict[str, np.ndarray]:
    p = {k: v.detach().cpu().double().numpy() for k, v in scene.params.items()}
    n = len(scene)
    cols = {"x": p["means"][:, 0], "y": p["means"][:, 1], "z": p["means"][:, 2]}
    cols.update({k: np.zeros(n) for k in ("nx", "ny", "nz")})
    if scene.is_feature_scene:
        dc, rest = np.zeros((n, 3)), np.zeros((n, 0))
    else:
        dc = p["sh0"][:, 0, :]
        rest = p["shN"].transpose(0, 2, 1).reshape(n, -1)  # channel-major
    cols.update({f"f_dc_{i}": dc[:, i] for i in range(3)})
    cols.update({f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])})
    cols["opacity"] = p["opacity_logits"]
    cols.update({f"scale_{i}": p["log_scales"][:, i] for i in range(3)})
    cols.update({f"rot_{i}": p["quats"][:, i] for i in range(4)})
    if scene.is_feature_scene:
        cols.update({f"feat_{i}": p["features"][:, i] for i in range(p["features"].shape[1])})
    return cols


def write_ply(path: str | Path, scene: GaussianScene) -> Path:
    """Write `scene` atomically in the standard layout (float32, binary little endian)."""
    cols = _columns(scene)
    data = np.empty(len(scene), dtype=[(k, "<f4") for k in cols])
    for k, v in cols.items():
        data[k] = v
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(scene)}",
              *[f"property float {k}" for k in cols], "end_header"]
    blob = ("\n".join(header) + "\n").encode("ascii") + data.tobytes()
    return atomic_write(path, lambda f: f.write(blob))


_KIND_WORDS = {"mesh": "a triangle mesh", "points": "a point cloud", "gaussians": "3D Gaussians"}


def read_ply(path: str | Path) -> GaussianScene:
    """Load a 3DGS PLY (ours or any viewer's / trainer's in the standard layout)."""
    path = Path(path)
    data = read_ply_elements(path)["vertex"]
    if not data:
        raise DataError(path, "property", "the vertex element has no properties")
    if lists := [k for k, v in data.items() if v.ndim != 1]:
        raise DataError(path, "property", f"list properties {lists[:5]} on the vertices are not 3DGS properties")
    n = len(next(iter(data.values())))
    if "opacity" not in data and {"x", "y", "z"} <= data.keys():
        raise DataError(path, "opacity", f"missing vertex property: this PLY is {_KIND_WORDS[read_ply_kind(path)]}, "
                        "not 3D Gaussians")

    def block(prefix: str, count: int | None = None) -> np.ndarray:
        found = [k for k in data if k.startswith(prefix) and k[len(prefix):].isdigit()]
        found = sorted(found, key=lambda k: int(k[len(prefix):]))
        if count is not None and found != [f"{prefix}{i}" for i in range(count)]:
            raise DataError(path, f"{prefix}*", f"expected properties {prefix}0..{prefix}{count - 1}, found {found}")
        if found != [f"{prefix}{i}" for i in range(len(found))]:
            raise DataError(path, f"{prefix}*", f"properties are not numbered 0..{len(found) - 1}: {found}")
        return np.stack([data[k] for k in found], -1) if found else np.zeros((n, 0))

    for required in ("x", "y", "z", "opacity"):
        if required not in data:
            raise DataError(path, required, "missing vertex property")

    def t(a: np.ndarray, name: str) -> torch.Tensor:
        with np.errstate(over="ignore", invalid="ignore"):
            a = np.array(a, dtype=np.float32)  # a writable copy
        if not np.isfinite(a).all():
            raise DataError(path, name, "contains NaN or infinity (or values beyond float32)")
        return torch.from_numpy(a)

    means = t(np.stack([data["x"], data["y"], data["z"]], -1), "x/y/z")
    params = {"means": means, "quats": t(block("rot_", 4), "rot_*"), "log_scales": t(block("scale_", 3), "scale_*"),
              "opacity_logits": t(data["opacity"], "opacity")}
    feats = block("feat_")
    if feats.shape[1] > 0:
        return GaussianScene(**params, features=t(feats, "feat_*"))
    dc, rest = block("f_dc_", 3), block("f_rest_")
    k = rest.shape[1] // 3 + 1
    if rest.shape[1] % 3 or math.isqrt(k) ** 2 != k or k > 16:
        raise DataError(path, "f_rest_*", f"{rest.shape[1]} SH rest coefficients is not 3 x ((d+1)^2 - 1), d <= 3")
    sh_n = rest.reshape(n, 3, k - 1).transpose(0, 2, 1)
    return GaussianScene(**params, sh0=t(dc[:, None, :], "f_dc_*"), shN=t(sh_n, "f_rest_*"))
