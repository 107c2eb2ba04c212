"""The PLY file format, read once for every kind of PLY the project meets: 3DGS scenes, point clouds
(COLMAP's / nerfstudio's `sparse_pc.ply`) and triangle meshes (our TSDF exports, any tool's).

    elements = read_ply_elements(path)      # {"vertex": {"x": array [N], ...}, "face": {"vertex_indices": [F,3]}}
    kind = read_ply_kind(path)              # "gaussians", "mesh" or "points", from the header alone

Formats: ascii and binary_little_endian. Scalar properties of every numeric type; list properties
(faces) with the same length in every row (triangles, quads). Only regular files of bounded size are
read (`scene3d.files.read_bytes`); every problem is one `DataError` naming the file and the header
field ("header", "format", "element", "property") or the element ("vertex", "face") at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scene3d.errors import DataError
from scene3d.files import read_bytes, read_head

MAX_PLY_BYTES = 2**36  # 64 GiB: only regular files up to this size are read
MAX_HEADER_BYTES = 1 << 20
MAX_LIST_LENGTH = 1024  # vertices of one face

SCALAR_TYPES = {"char": "i1", "uchar": "u1", "int8": "i1", "uint8": "u1", "short": "<i2", "ushort": "<u2",
                "int16": "<i2", "uint16": "<u2", "int": "<i4", "uint": "<u4", "int32": "<i4", "uint32": "<u4",
                "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8"}


@dataclass
class PlyElement:
    """One `element NAME COUNT` block: scalar properties (name, numpy dtype) and list properties
    (name, count dtype, item dtype)."""

    name: str
    count: int
    scalars: list[tuple[str, str]] = field(default_factory=list)
    lists: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.scalars] + [n for n, *_ in self.lists]


def parse_header(raw: bytes, path: Path) -> tuple[str, list[PlyElement], int]:
    """(format, elements in file order, offset of the body)."""
    end = raw.find(b"end_header", 0, MAX_HEADER_BYTES)
    if not raw.startswith(b"ply") or end < 0:
        raise DataError(path, "header", "not a PLY file (needs 'ply' ... 'end_header')")
    body_start = raw.index(b"\n", end) + 1 if b"\n" in raw[end:] else len(raw)
    fmt, elements = None, []
    for line in raw[:end].decode("ascii", errors="replace").split("\n")[1:]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            if len(parts) < 2 or parts[1] not in ("binary_little_endian", "ascii"):
                raise DataError(path, "format", f"unsupported PLY format {' '.join(parts[1:])!r}; "
                                "expected binary_little_endian or ascii")
            fmt = parts[1]
        elif parts[0] == "element":
            if len(parts) != 3 or not parts[2].isascii() or not parts[2].isdigit() or len(parts[2]) > 15:
                raise DataError(path, "element", f"malformed element line {line[:100]!r}")
            if parts[1] in (e.name for e in elements):
                raise DataError(path, "element", f"element {parts[1]!r} declared twice")
            elements.append(PlyElement(parts[1], int(parts[2])))
        elif parts[0] == "property":
            if not elements:
                raise DataError(path, "element vertex", f"property before any 'element' line: {line[:100]!r}")
            element = elements[-1]
            if len(parts) == 5 and parts[1] == "list" and parts[2] in SCALAR_TYPES and parts[3] in SCALAR_TYPES:
                if np.dtype(SCALAR_TYPES[parts[2]]).kind not in "iu":
                    raise DataError(path, "property", f"a list's length must be an integer type: {line[:100]!r}")
                element.lists.append((parts[4], SCALAR_TYPES[parts[2]], SCALAR_TYPES[parts[3]]))
            elif len(parts) == 3 and parts[1] in SCALAR_TYPES:
                if element.lists:
                    raise DataError(path, "property", f"scalar {parts[2]!r} after a list property is not supported")
                element.scalars.append((parts[2], SCALAR_TYPES[parts[1]]))
            else:
                raise DataError(path, "property", f"unsupported property line {line[:100]!r}")
            if element.names.count(element.names[-1]) > 1:
                raise DataError(path, "property", f"duplicate property {element.names[-1]!r} in {element.name!r}")
        else:
            raise DataError(path, "header", f"unknown header line {line[:100]!r}")
    if fmt is None:
        raise DataError(path, "format", "missing 'format' line")
    return fmt, elements, body_start


def read_ply_elements(path: str | Path, max_bytes: int = MAX_PLY_BYTES) -> dict[str, dict[str, np.ndarray]]:
    """Every element of the PLY file `path`: {element: {property: array}}; scalars are [count] arrays,
    list properties [count, length] arrays. A file without a vertex element is refused."""
    path = Path(path)
    raw = read_bytes(path, "file", max_bytes)
    fmt, elements, offset = parse_header(raw, path)
    if not any(e.name == "vertex" for e in elements):
        raise DataError(path, "element vertex", "missing 'element vertex N' line")
    out = {}
    if fmt == "ascii":
        tokens, position = raw[offset:].split(), 0
        for element in elements:
            out[element.name], position = _read_ascii(element, tokens, position, path)
    else:
        for element in elements:
            out[element.name], offset = _read_binary(element, raw, offset, path)
    return out


def _read_binary(element: PlyElement, raw: bytes, offset: int, path: Path) -> tuple[dict[str, np.ndarray], int]:
    n = element.count
    if not element.lists:
        dtype = np.dtype(element.scalars)
        if len(raw) - offset < n * dtype.itemsize:
            raise DataError(path, element.name, f"file truncated: {n} {element.name} rows need {n * dtype.itemsize} "
                            f"bytes, found {len(raw) - offset}")
        rows = np.frombuffer(raw, dtype=dtype, count=n, offset=offset)
        return {name: rows[name] for name in dtype.names or ()}, offset + n * dtype.itemsize
    # Rows with list properties: every list has the length of the first row's (triangle or quad meshes).
    columns: list[tuple] = list(element.scalars)
    position = offset + np.dtype(element.scalars).itemsize if element.scalars else offset
    for name, count_t, item_t in element.lists:
        if n == 0:
            length = 0
        else:
            if len(raw) < position + np.dtype(count_t).itemsize:
                raise DataError(path, element.name, "file truncated in the first row")
            length = int(np.frombuffer(raw, count_t, 1, position)[0])
            if not 0 <= length <= MAX_LIST_LENGTH:
                raise DataError(path, element.name, f"list {name!r} of length {length} (0..{MAX_LIST_LENGTH} read)")
        columns += [(f"{name}:count", count_t), (name, item_t, (length,))]
        position += np.dtype(count_t).itemsize + length * np.dtype(item_t).itemsize
    dtype = np.dtype(columns)
    if len(raw) - offset < n * dtype.itemsize:
        raise DataError(path, element.name, f"file truncated, or rows whose lists differ in length ({n} "
                        f"{element.name} rows of {dtype.itemsize} bytes, {len(raw) - offset} found)")
    rows = np.frombuffer(raw, dtype=dtype, count=n, offset=offset)
    for name, *_ in element.lists:
        if n and (rows[f"{name}:count"] != rows[f"{name}:count"][0]).any():
            raise DataError(path, element.name, f"rows of {name!r} differ in length; only uniform lists are read")
    return {name: rows[name] for name in element.names}, offset + n * dtype.itemsize


def _read_ascii(element: PlyElement, tokens: list[bytes], position: int, path: Path
                ) -> tuple[dict[str, np.ndarray], int]:
    n, width = element.count, len(element.scalars)
    lengths = []
    if element.lists and n:  # lengths from the first row; uniform rows are checked below
        at = position + width
        for _ in element.lists:
            if at >= len(tokens) or not tokens[at].isdigit():
                raise DataError(path, element.name, "missing or bad list length in the first row")
            lengths.append(int(tokens[at]))
            if lengths[-1] > MAX_LIST_LENGTH:
                raise DataError(path, element.name, f"list of length {lengths[-1]} (0..{MAX_LIST_LENGTH} read)")
            at += 1 + lengths[-1]
        width = at - position
    elif element.lists:
        lengths = [0] * len(element.lists)
    need = n * width
    if len(tokens) - position < need:
        raise DataError(path, element.name, f"expected {n} x {width} values, found {len(tokens) - position}")
    try:
        values = np.array(tokens[position:position + need], dtype=np.float64).reshape(n, width)
    except ValueError as err:
        raise DataError(path, element.name, f"ascii body is not numbers ({err})") from None
    out = {name: values[:, i] for i, (name, _) in enumerate(element.scalars)}
    at = len(element.scalars)
    for (name, _, item_t), length in zip(element.lists, lengths, strict=True):
        if n and (values[:, at] != length).any():
            raise DataError(path, element.name, f"rows of {name!r} differ in length; only uniform lists are read")
        out[name] = values[:, at + 1:at + 1 + length].astype(item_t)
        at += 1 + length
    return out, position + need


def ply_kind(elements: list[PlyElement]) -> str:
    """What a PLY holds, from its header: "gaussians" (any 3DGS property on the vertices: opacity, scale_0,
    rot_0, f_dc_0), "mesh" (a non-empty face element) or "points"."""
    by_name = {e.name: e for e in elements}
    vertex = by_name.get("vertex")
    if vertex is not None and {"opacity", "scale_0", "rot_0", "f_dc_0"} & set(vertex.names):
        return "gaussians"
    if "face" in by_name and by_name["face"].count > 0:
        return "mesh"
    return "points"


def read_ply_kind(path: str | Path) -> str:
    """`ply_kind` of the PLY file `path`, reading only its header."""
    path = Path(path)
    return ply_kind(parse_header(read_head(path, "file", MAX_HEADER_BYTES), path)[1])
