"""Coloured point clouds as PLY (nerfstudio's `sparse_pc.ply`, named by `ply_file_path` in transforms.json).

Written binary little-endian with float x, y, z and uchar red, green, blue; read from any PLY whose first
element is `vertex` with x, y, z (any numeric type, ascii or binary little-endian) and optional colours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scene3d.checkpoint import atomic_write
from scene3d.errors import DataError

_TYPES = {"char": "i1", "uchar": "u1", "int8": "i1", "uint8": "u1", "short": "i2", "ushort": "u2", "int16": "i2",
          "uint16": "u2", "int": "i4", "uint": "u4", "int32": "i4", "uint32": "u4", "float": "f4", "float32": "f4",
          "double": "f8", "float64": "f8"}


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


def read_points_ply(path: str | Path, field: str = "ply_file_path") -> tuple[np.ndarray, np.ndarray | None]:
    """(points [P,3] float32, colors [P,3] uint8 or None) of a PLY's vertex element."""
    path = Path(path)
    data = path.read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise DataError(path, field, "not a PLY file (no 'ply' magic or no end_header)")
    lines = data[:end].decode("ascii", "replace").splitlines()
    fmt = next((ln.split()[1] for ln in lines if ln.startswith("format ")), "")
    props, count, in_vertex = [], 0, False
    for ln in lines:
        parts = ln.split()
        if parts[:1] == ["element"]:
            if props or in_vertex:
                break  # only the first element is read; it must be the vertices
            in_vertex = parts[1:2] == ["vertex"] and len(parts) == 3 and parts[2].isdigit()
            count = int(parts[2]) if in_vertex else 0
        elif parts[:1] == ["property"] and in_vertex:
            if len(parts) != 3 or parts[1] not in _TYPES:
                raise DataError(path, field, f"unsupported vertex property {ln.strip()!r}")
            props.append((parts[2], "<" + _TYPES[parts[1]]))
    names = [n for n, _ in props]
    if not in_vertex or not {"x", "y", "z"} <= set(names):
        raise DataError(path, field, "the first element must be 'vertex' with x, y, z")
    body = data[end + len(b"end_header\n"):]
    if fmt == "binary_little_endian":
        dtype = np.dtype(props)
        if len(body) < count * dtype.itemsize:
            raise DataError(path, field, f"declares {count} vertices but the file is shorter")
        rows = np.frombuffer(body, dtype=dtype, count=count)
        cols = {n: rows[n] for n in names}
    elif fmt == "ascii":
        try:
            rows_text = body.decode("ascii").splitlines()[:count]
            table = np.loadtxt(rows_text, ndmin=2) if count else np.zeros((0, len(names)))
        except ValueError as err:
            raise DataError(path, field, f"bad ascii vertex rows ({err})") from None
        if table.shape != (count, len(names)):
            raise DataError(path, field, f"expected {count} vertex rows of {len(names)} values")
        cols = {n: table[:, i] for i, n in enumerate(names)}
    else:
        raise DataError(path, field, f"unsupported PLY format {fmt!r} (ascii or binary_little_endian)")
    points = np.stack([cols[c] for c in "xyz"], -1).astype(np.float32)
    if not np.isfinite(points).all():
        raise DataError(path, field, "vertex positions contain NaN or infinity")
    colors = (np.stack([cols[c] for c in ("red", "green", "blue")], -1).astype(np.uint8)
              if {"red", "green", "blue"} <= set(names) else None)
    return points, colors
