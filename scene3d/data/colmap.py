"""COLMAP sparse models (`cameras`, `images`, `points3D`, binary `.bin` or text `.txt`), read and written.

The layouts are COLMAP's own (`src/colmap/scene/reconstruction_io.cc`, `scripts/python/read_write_model.py`):
binary files are little-endian, each starting with a uint64 count; images hold world-to-camera poses as a
quaternion (qw, qx, qy, qz) and a translation, in OpenCV camera axes, so c2w is their inverse with no axis
flip. COLMAP's pixel centres are at +0.5 like ours. `find_model(path)` accepts a COLMAP project folder
(with `sparse/0` or `sparse`), or the model folder itself; images are looked up in `images/` of the
project. Every problem is a `DataError` naming the file and the field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scene3d.camera_models import MODELS, distortion_vector
from scene3d.cameras import Cameras, invert_rigid, opencv_to_opengl
from scene3d.checkpoint import atomic_write_json
from scene3d.data.lens_fields import lens_fields
from scene3d.data.points_ply import write_points_ply
from scene3d.errors import DataError
from scene3d.files import read_bytes, read_text
from scene3d.rotations import quat_to_rotmat

# COLMAP model id -> (name, number of parameters); all of COLMAP's models, so any of them parses
MAX_MODEL_BYTES = 2**32  # a cameras/images/points3D file beyond 4 GiB is refused before reading
MODEL_IDS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
             4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
             8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12)}
MODEL_NAMES = {name: (i, n) for i, (name, n) in MODEL_IDS.items()}
# parameter names of the models we render (COLMAP's order)
PARAMS = {"SIMPLE_PINHOLE": ("f", "cx", "cy"), "PINHOLE": ("fx", "fy", "cx", "cy"),
          "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"), "RADIAL": ("f", "cx", "cy", "k1", "k2"),
          "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
          "OPENCV_FISHEYE": ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4")}


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass
class ColmapImage:
    id: int
    qvec: tuple[float, float, float, float]  # world-to-camera rotation, (w, x, y, z)
    tvec: tuple[float, float, float]  # world-to-camera translation
    camera_id: int
    name: str


@dataclass
class ColmapModel:
    """cameras and images by id; points [P,3] float64 and their colours [P,3] uint8."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: np.ndarray
    colors: np.ndarray
    path: Path  # the model folder


# reading --------------------------------------------------------------------------------------
class _Bytes:
    """A binary file read with bounds checks: a short read is a DataError naming the file."""

    def __init__(self, path: Path):
        self.path, self.data, self.at = path, read_bytes(path, "file", MAX_MODEL_BYTES), 0

    def read(self, fmt: str, field: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.at + size > len(self.data):
            raise DataError(self.path, field, f"file ends early (at byte {self.at}, {len(self.data)} in all)")
        out = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += size
        return out

    def count(self, field: str, min_bytes_each: int) -> int:
        (n,) = self.read("Q", field)
        if n * min_bytes_each > len(self.data) - self.at:
            raise DataError(self.path, field, f"declares {n} entries, more than the file holds")
        return n

    def name(self, field: str) -> str:
        end = self.data.find(b"\x00", self.at)
        if end < 0:
            raise DataError(self.path, field, "name without its terminating NUL byte")
        raw, self.at = self.data[self.at:end], end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(self.path, field, "name is not UTF-8") from None

    def done(self) -> None:
        if self.at != len(self.data):
            raise DataError(self.path, "file", f"{len(self.data) - self.at} bytes left after the last entry")


def _model_params(path: Path, field: str, model_id: int) -> tuple[str, int]:
    if model_id not in MODEL_IDS:
        raise DataError(path, field, f"unknown COLMAP camera model id {model_id}")
    return MODEL_IDS[model_id]


def _read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    f, out = _Bytes(path), {}
    for i in range(f.count("num_cameras", 24)):
        cam_id, model_id, width, height = f.read("iiQQ", f"cameras[{i}]")
        name, n = _model_params(path, f"cameras[{i}].model_id", model_id)
        out[cam_id] = ColmapCamera(cam_id, name, width, height, f.read("d" * n, f"cameras[{i}].params"))
    f.done()
    return out


def _read_images_bin(path: Path) -> dict[int, ColmapImage]:
    f, out = _Bytes(path), {}
    for i in range(f.count("num_reg_images", 64)):
        image_id, *qt, camera_id = f.read("idddddddi", f"images[{i}]")
        name = f.name(f"images[{i}].name")
        n2d = f.count(f"images[{i}].num_points2D", 24)
        f.read("ddq" * n2d, f"images[{i}].points2D")
        out[image_id] = ColmapImage(image_id, tuple(qt[:4]), tuple(qt[4:]), camera_id, name)
    f.done()
    return out


def _read_points_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    f, xyz, rgb = _Bytes(path), [], []
    for i in range(f.count("num_points", 51)):
        _, x, y, z, r, g, b, _ = f.read("QdddBBBd", f"points3D[{i}]")
        track = f.count(f"points3D[{i}].track_length", 8)
        f.read("ii" * track, f"points3D[{i}].track")
        xyz.append((x, y, z))
        rgb.append((r, g, b))
    f.done()
    return np.asarray(xyz, np.float64).reshape(-1, 3), np.asarray(rgb, np.uint8).reshape(-1, 3)


def _text_lines(path: Path, keep_blank: bool = False) -> list[tuple[int, str]]:
    """(line number, text) of the non-comment lines."""
    text = read_text(path, "file", MAX_MODEL_BYTES)
    lines = [(i + 1, line.strip()) for i, line in enumerate(text.splitlines()) if not line.startswith("#")]
    return lines if keep_blank else [(i, s) for i, s in lines if s]


def _parse(path: Path, line: int, kind, items: list[str], what: str):
    try:
        return [kind(x) for x in items]
    except ValueError:
        raise DataError(path, f"line {line}", f"{what} must be numbers, got {' '.join(items)[:100]!r}") from None


def _read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    out = {}
    for line, text in _text_lines(path):
        parts = text.split()
        if len(parts) < 4 or parts[1] not in MODEL_NAMES:
            what = "needs CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]" if len(parts) < 4 else f"unknown model {parts[1]!r}"
            raise DataError(path, f"line {line}", what)
        cam_id, width, height = _parse(path, line, int, [parts[0], *parts[2:4]], "CAMERA_ID, WIDTH, HEIGHT")
        params = tuple(_parse(path, line, float, parts[4:], "PARAMS"))
        if len(params) != MODEL_NAMES[parts[1]][1]:
            raise DataError(path, f"line {line}", f"{parts[1]} has {MODEL_NAMES[parts[1]][1]} parameters, "
                            f"got {len(params)}")
        out[cam_id] = ColmapCamera(cam_id, parts[1], width, height, params)
    return out


def _read_images_txt(path: Path) -> dict[int, ColmapImage]:
    out, lines = {}, _text_lines(path, keep_blank=True)
    while lines and not lines[0][1]:
        lines.pop(0)
    for k in range(0, len(lines), 2):  # two lines per image: the pose, then POINTS2D[] (maybe empty)
        line, text = lines[k]
        parts = text.split()
        if len(parts) < 10:
            raise DataError(path, f"line {line}", "needs IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        image_id, camera_id = _parse(path, line, int, [parts[0], parts[8]], "IMAGE_ID, CAMERA_ID")
        qt = _parse(path, line, float, parts[1:8], "QW QX QY QZ TX TY TZ")
        out[image_id] = ColmapImage(image_id, tuple(qt[:4]), tuple(qt[4:]), camera_id, " ".join(parts[9:]))
    return out


def _read_points_txt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    xyz, rgb = [], []
    for line, text in _text_lines(path):
        parts = text.split()
        if len(parts) < 8:
            raise DataError(path, f"line {line}", "needs POINT3D_ID X Y Z R G B ERROR TRACK[]")
        xyz.append(_parse(path, line, float, parts[1:4], "X Y Z"))
        rgb.append(_parse(path, line, int, parts[4:7], "R G B"))
    return np.asarray(xyz, np.float64).reshape(-1, 3), np.clip(np.asarray(rgb), 0, 255).astype(np.uint8).reshape(-1, 3)


def find_model(path: str | Path) -> Path | None:
    """The folder holding `cameras`, `images`, `points3D` (.bin or .txt) for a project or model folder."""
    path = Path(path)
    for folder in (path, path / "sparse" / "0", path / "sparse"):
        if any((folder / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
            return folder
    return None


def read_model(path: str | Path) -> ColmapModel:
    """Read the COLMAP model at `path` (a project folder or the model folder); binary wins over text."""
    folder = find_model(path)
    if folder is None:
        raise DataError(path, "path", "no COLMAP model (cameras.bin / cameras.txt) here or in sparse/0")
    ext = ".bin" if (folder / "cameras.bin").is_file() else ".txt"
    for name in ("cameras", "images", "points3D"):
        if not (folder / f"{name}{ext}").exists():
            raise DataError(folder / f"{name}{ext}", "file", "missing beside " + f"cameras{ext}")
    if ext == ".bin":
        cameras = _read_cameras_bin(folder / "cameras.bin")
        images = _read_images_bin(folder / "images.bin")
        points, colors = _read_points_bin(folder / "points3D.bin")
    else:
        cameras = _read_cameras_txt(folder / "cameras.txt")
        images = _read_images_txt(folder / "images.txt")
        points, colors = _read_points_txt(folder / "points3D.txt")
    if not np.isfinite(points).all():
        raise DataError(folder / f"points3D{ext}", "xyz", "points contain NaN or infinity")
    for image in images.values():
        if image.camera_id not in cameras:
            raise DataError(folder / f"images{ext}", f"image {image.id}.camera_id",
                            f"camera {image.camera_id} is not in cameras{ext}")
    if not images:
        raise DataError(folder / f"images{ext}", "num_reg_images", "the model has no registered images")
    return ColmapModel(cameras, images, points, colors, folder)


# conversion -----------------------------------------------------------------------------------
def camera_intrinsics(model: ColmapModel, cam: ColmapCamera) -> tuple[Tensor, str, Tensor]:
    """(K [3,3], lens, distortion [6]) of a COLMAP camera; a model we do not render is a DataError."""
    if cam.model not in PARAMS:
        raise DataError(model.path / "cameras", f"camera {cam.id}.model",
                        f"unsupported camera model {cam.model}; supported: {', '.join(PARAMS)}")
    p = dict(zip(PARAMS[cam.model], cam.params, strict=True))
    fx, fy = p.get("fx", p.get("f")), p.get("fy", p.get("f"))
    if not np.isfinite(cam.params).all() or fx <= 0 or fy <= 0:
        raise DataError(model.path / "cameras", f"camera {cam.id}.params",
                        f"must be finite with positive focal lengths, got {cam.params}"[:200])
    K = torch.tensor([[fx, 0.0, p["cx"]], [0.0, fy, p["cy"]], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return K, MODELS[cam.model][0], distortion_vector(p).double()


def model_cameras(model: ColmapModel, images: list[ColmapImage]) -> Cameras:
    """`Cameras` (float32, OpenCV axes, c2w) of `images`, which must share one image size and lens."""
    cams = [model.cameras[im.camera_id] for im in images]
    sizes = {(c.width, c.height) for c in cams}
    if len(sizes) != 1:
        raise DataError(model.path / "cameras", "width/height", f"images of several sizes {sorted(sizes)}; "
                        "one dataset holds one image size")
    intr = [camera_intrinsics(model, c) for c in cams]
    lenses = {lens for _, lens, _ in intr}
    if len(lenses) != 1:
        raise DataError(model.path / "cameras", "model", f"cameras with several lenses {sorted(lenses)}")
    for im in images:
        if not np.isfinite([*im.qvec, *im.tvec]).all() or np.linalg.norm(im.qvec) < 1e-8:
            raise DataError(model.path / "images", f"image {im.id}.pose",
                            "qvec and tvec must be finite, qvec non-zero")
    w2c = torch.eye(4, dtype=torch.float64).repeat(len(images), 1, 1)
    w2c[:, :3, :3] = quat_to_rotmat(torch.tensor([im.qvec for im in images], dtype=torch.float64))
    w2c[:, :3, 3] = torch.tensor([im.tvec for im in images], dtype=torch.float64)
    lens = lenses.pop()
    dist = None if lens == "PINHOLE" else torch.stack([d for _, _, d in intr]).float()
    width, height = sizes.pop()
    return Cameras(invert_rigid(w2c).float(), torch.stack([k for k, _, _ in intr]).float(), width, height, lens, dist)


def split_images(model: ColmapModel, split: str) -> list[ColmapImage]:
    """nerfstudio's COLMAP split: images sorted by name, every 8th (index 0, 8, ...) held out for val / test."""
    ordered = sorted(model.images.values(), key=lambda im: im.name)
    if len(ordered) < 2:
        return ordered
    if split == "train":
        return [im for i, im in enumerate(ordered) if i % 8]
    if split in ("val", "test"):
        return [im for i, im in enumerate(ordered) if i % 8 == 0]
    raise DataError(model.path, "split", f"unknown split {split!r}; expected train, val or test")


def image_folder(model: ColmapModel, project: Path) -> Path:
    """`images/` of the COLMAP project: beside `sparse/`, or beside the model folder."""
    for folder in (project / "images", model.path.parent.parent / "images", model.path.parent / "images"):
        if folder.is_dir():
            return folder
    raise DataError(project, "images", "no images/ folder in the COLMAP project")


# writing --------------------------------------------------------------------------------------
def write_model(folder: str | Path, cameras: list[ColmapCamera], images: list[ColmapImage], points: np.ndarray,
                colors: np.ndarray, binary: bool = True) -> Path:
    """Write a COLMAP model (no 2D observations, empty point tracks) as .bin or .txt files in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if binary:
        with open(folder / "cameras.bin", "wb") as f:
            f.write(struct.pack("<Q", len(cameras)))
            for c in cameras:
                f.write(struct.pack("<iiQQ", c.id, MODEL_NAMES[c.model][0], c.width, c.height))
                f.write(struct.pack("<" + "d" * len(c.params), *c.params))
        with open(folder / "images.bin", "wb") as f:
            f.write(struct.pack("<Q", len(images)))
            for im in images:
                f.write(struct.pack("<idddddddi", im.id, *im.qvec, *im.tvec, im.camera_id))
                f.write(im.name.encode("utf-8") + b"\x00" + struct.pack("<Q", 0))
        with open(folder / "points3D.bin", "wb") as f:
            f.write(struct.pack("<Q", len(points)))
            for i, (p, c) in enumerate(zip(points, colors, strict=True)):
                f.write(struct.pack("<QdddBBBdQ", i + 1, *map(float, p), *map(int, c), 0.0, 0))
        return folder
    (folder / "cameras.txt").write_text("# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n" + "".join(
        f"{c.id} {c.model} {c.width} {c.height} {' '.join(repr(float(p)) for p in c.params)}\n" for c in cameras))
    header = "# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n# POINTS2D[]\n"
    (folder / "images.txt").write_text(header + "".join(
        f"{im.id} {' '.join(repr(float(v)) for v in (*im.qvec, *im.tvec))} {im.camera_id} {im.name}\n\n"
        for im in images))
    (folder / "points3D.txt").write_text("# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[]\n" + "".join(
        f"{i + 1} {' '.join(repr(float(v)) for v in p)} {' '.join(str(int(v)) for v in c)} 0.0\n"
        for i, (p, c) in enumerate(zip(points, colors, strict=True))))
    return folder


# nerfstudio's colmap_to_json world change: x and y swapped, z negated (recorded as `applied_transform`)
APPLIED_TRANSFORM = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])


def colmap_to_transforms(project: str | Path, out: str | Path | None = None) -> Path:
    """Write nerfstudio's `transforms.json` (and `sparse_pc.ply`) for a COLMAP project, as nerfstudio's
    `colmap_to_json`: OpenGL camera axes, its world change in `applied_transform`, every image (sorted by
    name), per-frame intrinsics and lens keys. `out` defaults to the folder holding `images/`, and must hold it."""
    project = Path(project)
    model = read_model(project)
    folder = image_folder(model, project).resolve()
    out = Path(out) if out is not None else folder.parent
    if not folder.is_relative_to(out.resolve()):
        raise DataError(out, "out", f"the images folder {folder} must be inside the output folder")
    images = sorted(model.images.values(), key=lambda im: im.name)
    cams = model_cameras(model, images)
    applied = torch.cat([APPLIED_TRANSFORM, torch.tensor([[0.0, 0.0, 0.0, 1.0]])])
    c2w = applied @ opencv_to_opengl(cams.c2w)
    frames = []
    for i, im in enumerate(images):
        k = cams.K[i]
        dist = None if cams.distortion is None else cams.distortion[i]
        frames.append({"file_path": str((folder / im.name).relative_to(out.resolve())),
                       "transform_matrix": c2w[i].tolist(), "colmap_im_id": im.id,
                       "fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2]),
                       "w": cams.width, "h": cams.height, **lens_fields(cams.lens, dist)})
    points = (torch.from_numpy(model.points).float() @ APPLIED_TRANSFORM[:, :3].T).numpy()
    write_points_ply(out / "sparse_pc.ply", points, model.colors)
    doc = {**({"camera_model": frames[0]["camera_model"]} if "camera_model" in frames[0] else {}), "frames": frames,
           "applied_transform": APPLIED_TRANSFORM.tolist(), "ply_file_path": "sparse_pc.ply"}
    return atomic_write_json(out / "transforms.json", doc)
