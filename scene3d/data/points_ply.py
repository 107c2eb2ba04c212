"""Coloured point clouds as PLY (nerfstudio's `sparse_pc.ply`, named by `ply_file_path` in transforms.json).

Written binary little-endian with float x, y, z and uchar red, green, blue; read from any PLY whose `vertex`
element has x, y, z (any numeric type, ascii or binary little-endian) and optional colours (`scene3d.plyfile`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scene3d.checkpoint import atomic_write
from scene3d.errors import DataError
from scene3d.plyfile import read_ply_elements


def write_points_ply(path: str | Path, points: np.ndarray, colors: np.ndarray) -> Path:
    """points [P,3] float, colors [P,3] uint8 -> a binary PLY, written atomically."""
    rows = np.zeros(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                        ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, name in enumerate("xyz"):
        rows[name] = points[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        rows[name] = colors[:, i]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    blob = header.encode() + rows.tobytes()
    return atomic_write(path, lambda f: f.write(blob))


def read_points_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(points [P,3] float32, colors [P,3] uint8 or None) of a PLY's vertex element."""
    return vertex_points(Path(path), read_ply_elements(path)["vertex"])


def vertex_points(path: Path, vertex: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """(positions [N,3] float32, colours [N,3] uint8 or None) of a PLY vertex element (`read_ply_elements`);
    float colours in [0, 1] are scaled to 0..255."""
    if not {"x", "y", "z"} <= vertex.keys():
        raise DataError(path, "vertex", "the vertex element needs x, y, z")
    if any(vertex[c].ndim != 1 for c in ("x", "y", "z", "red", "green", "blue") if c in vertex):
        raise DataError(path, "vertex", "x, y, z and colours must be scalar properties, not lists")
    with np.errstate(over="ignore", invalid="ignore"):
        points = np.stack([vertex[c] for c in "xyz"], -1).astype(np.float32)
    if not np.isfinite(points).all():
        raise DataError(path, "vertex", "positions contain NaN or infinity (or values beyond float32)")
    if not {"red", "green", "blue"} <= vertex.keys():
        return points, None
    colors = np.stack([vertex[c] for c in ("red", "green", "blue")], -1)
    if colors.dtype.kind == "f" and colors.max(initial=0) <= 1:
        colors = colors * 255
    return points, np.clip(colors, 0, 255).astype(np.uint8)
