"""Blender (`transforms_{split}.json`) and nerfstudio (`transforms.json`) datasets on disk.

Both store OpenGL camera-to-world matrices; we convert to OpenCV at this boundary. Intrinsics come
from `fl_x, fl_y, cx, cy, w, h` (top level or per frame) or, for Blender files without them, from
`camera_angle_x` and the image size. Optional per-frame buffers: `depth_file_path` (.npy or 16-bit PNG,
times `depth_unit_scale_factor` as in nerfstudio, default 1e-3), `mask_path`, and our extensions
`semantic_path`, `instance_path` (8/16-bit PNG labels) and `normal_path` (.npy world normals).

Every problem raises `DataError(file, field, problem)`: one line naming the file and the field.
The JSON file is written last, so an interrupted write leaves no loadable half-dataset.
"""

from __future__ import annotations

import math
import tokenize
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from scene3d.cameras import Cameras, opencv_to_opengl, opengl_to_opencv
from scene3d.checkpoint import atomic_write_json
from scene3d.data import colmap
from scene3d.data.dataset import MultiViewDataset
from scene3d.data.json_doc import JsonDoc
from scene3d.data.lens_fields import frame_lens, lens_fields, stack_lenses
from scene3d.data.normalize import Normalization, normalize_dataset, to_original
from scene3d.data.points_ply import read_points_ply
from scene3d.errors import DataError, MissingSplitError
from scene3d.files import regular_file_size

SPLITS = ("train", "val", "test")
_EXTRA_BUFFERS = {"depth_file_path": "depths", "mask_path": "masks", "normal_path": "normals",
                  "semantic_path": "semantic", "instance_path": "instance"}


# writing --------------------------------------------------------------------------------------
def _write_view_files(ds: MultiViewDataset, i: int, folder: Path, stem: str, root: Path) -> dict[str, Any]:
    """Write one view's image and buffers; return the frame entry's file fields (relative paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    entry: dict[str, Any] = {}
    iio.imwrite(folder / f"{stem}.png", (ds.images[i].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
    entry["file_path"] = str((folder / f"{stem}.png").relative_to(root))
    if ds.depths is not None:
        np.save(folder / f"{stem}_depth.npy", ds.depths[i].numpy().astype(np.float32))
        entry["depth_file_path"] = str((folder / f"{stem}_depth.npy").relative_to(root))
    if ds.masks is not None:
        iio.imwrite(folder / f"{stem}_mask.png", ds.masks[i].numpy().astype(np.uint8) * 255)
        entry["mask_path"] = str((folder / f"{stem}_mask.png").relative_to(root))
    if ds.normals is not None:
        np.save(folder / f"{stem}_normal.npy", ds.normals[i].numpy().astype(np.float32))
        entry["normal_path"] = str((folder / f"{stem}_normal.npy").relative_to(root))
    for name in ("semantic", "instance"):
        labels = getattr(ds, name)
        if labels is not None:
            iio.imwrite(folder / f"{stem}_{name}.png", labels[i].numpy().astype(np.uint16))
            entry[f"{name}_path"] = str((folder / f"{stem}_{name}.png").relative_to(root))
    return entry


def _intrinsics_dict(cameras: Cameras) -> dict[str, float]:
    k = cameras.K[0]
    return {"fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2]),
            "w": cameras.width, "h": cameras.height}


def _lens_dict(cameras: Cameras) -> dict[str, Any]:
    """`camera_model` and distortion keys of the first camera."""
    dist = None if cameras.distortion is None else cameras.distortion[0]
    return lens_fields(cameras.lens, dist)


def _scene_fields(ds: MultiViewDataset) -> dict[str, Any]:
    """Scene bounds, background, and the depth scale (our .npy depths are already in scene units)."""
    extra = {"depth_unit_scale_factor": 1.0} if ds.depths is not None else {}
    return {"aabb": ds.aabb.tolist(), "background": ds.background.tolist(), **extra}


def save_blender(splits: dict[str, MultiViewDataset], root: str | Path, progress: bool = False) -> Path:
    """Write `transforms_{split}.json` + `{split}/NAME.png` (+ buffers) per split."""
    root = Path(root)
    splits = {name: to_original(ds) for name, ds in splits.items()}
    if any(not ds.cameras.is_pinhole for ds in splits.values()):
        raise ValueError("the Blender layout has no lens distortion fields: use save_nerfstudio for distorted cameras")
    for split, ds in splits.items():
        frames = []
        for i, name in enumerate(tqdm(ds.names, desc=f"writing {split}", disable=not progress)):
            entry = _write_view_files(ds, i, root / split, name, root)
            entry["file_path"] = "./" + entry["file_path"].removesuffix(".png")  # Blender's own style
            entry["transform_matrix"] = opencv_to_opengl(ds.cameras.c2w[i]).tolist()
            frames.append(entry)
        doc = {"camera_angle_x": float(ds.cameras.fov_x[0]), **_intrinsics_dict(ds.cameras), **_scene_fields(ds),
               "frames": frames}
        atomic_write_json(root / f"transforms_{split}.json", doc)
    return root


def save_nerfstudio(splits: dict[str, MultiViewDataset], root: str | Path, progress: bool = False) -> Path:
    """Write one `transforms.json` (nerfstudio layout, `{split}_filenames` lists) + `images/`."""
    root = Path(root)
    splits = {name: to_original(ds) for name, ds in splits.items()}
    frames, split_lists = [], {}
    first = next(iter(splits.values()))
    top_lens = _lens_dict(first.cameras[0])
    if len({ds.cameras.lens for ds in splits.values()}) != 1:
        raise ValueError("every split of a nerfstudio dataset must have the same lens model")
    for split, ds in splits.items():
        names = []
        for i, name in enumerate(tqdm(ds.names, desc=f"writing {split}", disable=not progress)):
            entry = _write_view_files(ds, i, root / "images", name, root)
            entry["transform_matrix"] = opencv_to_opengl(ds.cameras.c2w[i]).tolist()
            if not torch.allclose(ds.cameras.K[i], first.cameras.K[0]):
                entry.update({k: v for k, v in _intrinsics_dict(ds.cameras[i]).items() if k not in ("w", "h")})
            lens = _lens_dict(ds.cameras[i])
            if lens != top_lens:
                entry.update({k: v for k, v in lens.items() if k != "camera_model"})
            frames.append(entry)
            names.append(entry["file_path"])
        split_lists[f"{split}_filenames"] = names
    doc = {**top_lens, **_intrinsics_dict(first.cameras), **_scene_fields(first),
           **split_lists, "frames": frames}
    atomic_write_json(root / "transforms.json", doc)
    return root


# reading --------------------------------------------------------------------------------------
MAX_IMAGE_PIXELS = 2**26  # 8192 x 8192: larger declared sizes are refused before decoding
MAX_FILE_BYTES = 2**32  # 4 GiB: no image or buffer file of a dataset may be larger


@dataclass(frozen=True)
class Budget:
    """What one `load_dataset` call may read, summed over its frames: image pixels (as the image
    headers declare them) and bytes of the files it names (images and buffers). Both are checked
    before anything is decoded; the error names the budget."""

    pixels: int = 2**29  # 537M pixels: 6 GiB as float32 RGB
    bytes: int = 2**34  # 16 GiB


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file's top-level object; any problem is one `DataError` naming the file."""
    return JsonDoc(Path(path)).data


def _check_image_size(path: Path, where: str) -> tuple[int, int] | None:
    """(width, height) from the image header; refuses more than MAX_IMAGE_PIXELS or more than one frame
    (an animated PNG / GIF, a multi-page TIFF) without decoding. None: not a format PIL knows."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                (w, h), frames = im.size, getattr(im, "n_frames", 1)
    except Image.DecompressionBombError as err:
        raise DataError(path, where, f"image declares too many pixels ({err})") from None
    except Exception:  # noqa: BLE001 - not a format PIL knows: imageio decides below
        return None
    if w * h > MAX_IMAGE_PIXELS:
        raise DataError(path, where, f"image declares {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS} allowed")
    if frames != 1:
        raise DataError(path, where, f"image holds {frames} frames (an animation or a multi-page file); one expected")
    return w, h


def _read_image(path: Path, where: str) -> np.ndarray:
    _check_image_size(path, where)
    try:
        img = iio.imread(path)
    except Exception as err:  # decoders raise many types; each becomes one clear message
        raise DataError(path, where, f"cannot decode image ({type(err).__name__}: {err})"[:300]) from None
    if img.dtype not in (np.uint8, np.uint16) or img.ndim not in (2, 3):
        raise DataError(path, where, f"unsupported image of dtype {img.dtype} and shape {img.shape}")
    return img


def _to_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 65535.0)


def _load_rgb(path: Path, where: str, background: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB float [H,W,3] composited over the background, and the alpha mask if the image has one."""
    img = _read_image(path, where)
    if img.ndim == 2:
        img = img[..., None]
    channels = img.shape[-1]
    x = _to_float(img)
    if channels == 1:
        return np.repeat(x, 3, -1), None
    if channels == 3:
        return x, None
    if channels == 4:
        alpha = x[..., 3:]
        return x[..., :3] * alpha + background * (1 - alpha), alpha[..., 0] > 0.5
    raise DataError(path, where, f"image has {channels} channels; expected 1, 3 or 4")


def read_npy(path: Path, where: str) -> np.ndarray:
    """A real-valued .npy array (never unpickled); the header's shape is checked against the file
    size before anything is allocated."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=10000)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=10000)
            offset = f.tell()
        if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
            raise DataError(path, where, f"unsupported .npy dtype {dtype} (expected numbers)")
        need = math.prod(shape) * dtype.itemsize
        if path.stat().st_size - offset < need:
            raise DataError(path, where, f".npy declares shape {shape} ({need} bytes) but the file is shorter")
        arr = np.load(path, allow_pickle=False)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, OverflowError, tokenize.TokenError) as err:
        raise DataError(path, where, f"cannot read .npy ({err})") from None  # TokenError: numpy's old-header parser
    return arr


def _load_buffer(kind: str, path: Path, where: str, scale: float) -> np.ndarray:
    """A depth, mask, normal or label image as an array of the right kind (native dtypes)."""
    if path.suffix == ".npy":
        arr = read_npy(path, where)
        if kind == "depths":
            arr = arr.astype(np.float32) * np.float32(scale)
        elif kind == "normals":
            arr = arr.astype(np.float32)
        elif kind == "masks":
            arr = arr.astype(bool)
        else:
            if not np.isfinite(arr).all() or np.abs(arr).max(initial=0) > 2**31:
                raise DataError(path, where, "labels must be finite integers")
            arr = arr.astype(np.int64)
    else:
        img = _read_image(path, where)
        if kind == "depths":
            arr = img.astype(np.float32) * scale
        elif kind == "masks":
            arr = (img[..., 0] if img.ndim == 3 else img) > (127 if img.dtype == np.uint8 else 32767)
        elif kind in ("semantic", "instance"):
            arr = img.astype(np.int64)
        else:
            raise DataError(path, where, "normals must be stored as .npy")
    if kind in ("depths", "normals") and not np.isfinite(arr).all():
        raise DataError(path, where, "contains NaN or infinity")
    return arr


def _downscale(x: torch.Tensor, factor: int, kind: str) -> torch.Tensor:
    """[N,H,W,...] -> [N,H/f,W/f,...]: area average for colours, the centre sample for the rest."""
    if factor == 1:
        return x
    if kind == "images":
        return rearrange(F.avg_pool2d(rearrange(x, "n h w c -> n c h w"), factor), "n c h w -> n h w c")
    off = factor // 2
    return x[:, off::factor, off::factor]


def _split_frames(doc: JsonDoc, split: str, blender: bool) -> list[tuple[int, dict]]:
    frames = doc.data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise doc.error("frames", "must be a non-empty list")
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise doc.error(f"frames[{i}]", "must be an object")
    if blender:
        return list(enumerate(frames))
    listed = doc.data.get(f"{split}_filenames")
    if listed is None:
        if split != "train":
            raise MissingSplitError(doc.path, f"{split}_filenames", f"missing, so the file has no '{split}' split")
        return list(enumerate(frames))
    if not isinstance(listed, list) or not listed or not all(isinstance(n, str) for n in listed):
        raise doc.error(f"{split}_filenames", "must be a non-empty list of file paths")
    wanted = set(listed)
    chosen = [(i, fr) for i, fr in enumerate(frames) if isinstance(fr.get("file_path"), str)
              and fr["file_path"] in wanted]
    if len(chosen) != len(wanted):
        found = {fr["file_path"] for _, fr in chosen}
        raise doc.error(f"{split}_filenames", f"names a file no frame has: {sorted(wanted - found)[0]!r}")
    return chosen


def _check_budget(doc: JsonDoc, frames: list[tuple[int, dict]], budget: Budget) -> None:
    """Refuse frames that declare more pixels (image headers) or name more bytes (file sizes) than
    `budget`, and files that are not regular: all before anything is decoded."""
    pixels = size = 0
    for i, frame in frames:
        where = f"frames[{i}]"
        image = doc.file(frame, "file_path", f"{where}.file_path", suffixes=("", ".png"))
        header = _check_image_size(image, f"{where}.file_path")
        pixels += 0 if header is None else header[0] * header[1]
        size += regular_file_size(image, f"{where}.file_path", MAX_FILE_BYTES)
        for key in _EXTRA_BUFFERS:
            if key in frame:
                size += regular_file_size(doc.file(frame, key, f"{where}.{key}"), f"{where}.{key}", MAX_FILE_BYTES)
        if pixels > budget.pixels:
            raise doc.error("frames", f"frames up to {where} declare {pixels} pixels, more than this dataset's budget "
                            f"of {budget.pixels} pixels (scene3d.data.formats.Budget)")
        if size > budget.bytes:
            raise doc.error("frames", f"frames up to {where} name {size} bytes of files, more than this dataset's "
                            f"budget of {budget.bytes} bytes (scene3d.data.formats.Budget)")


def load_dataset(path: str | Path, split: str = "train", downscale: int = 1,
                 normalize: str | Normalization = "auto", budget: Budget = Budget()) -> MultiViewDataset:
    """Load a Blender (`transforms_{split}.json`), nerfstudio (`transforms.json`) or COLMAP dataset.

    `path` is the dataset folder or the JSON file itself (a COLMAP project or its `sparse/0`); `downscale`
    is an integer factor. `normalize` (scene3d.data.normalize): "auto" normalises captures, files that
    declare no `aabb` (COLMAP models always), with nerfstudio's defaults, and keeps the frame of files that
    declare their scene box; "none" never; a `Normalization` always, as it says. The frame is fitted to
    every pose of the capture (Blender: the train file's), so all splits share it; `dataset.frame` keeps it.

    `budget` bounds the pixels and file bytes a transforms file's frames read (checked before decoding).
    Camera values are checked in float32, the dtype training uses: finite intrinsics and poses, rigid
    poses (orthonormal rotation, last row 0 0 0 1) and finite rays through every image corner. A
    missing split is a `MissingSplitError`.
    """
    path = Path(path)
    if path.is_dir() and not any(path.glob("transforms*.json")) and colmap.find_model(path) is not None:
        ds, model = _load_colmap(path, split, downscale)
        poses, has_box = colmap.model_cameras(model, list(model.images.values())).c2w, False
    else:
        ds = _load_transforms(_json_path(path, split), split, downscale, budget)
        doc = JsonDoc(_json_path(path, "train") if path.is_dir() else _json_path(path, split))
        has_box = "aabb" in doc.data
        poses = torch.stack([opengl_to_opencv(doc.matrix(fr, "transform_matrix", f"frames[{i}].transform_matrix"))
                             for i, fr in _split_frames(doc, "train", True)])
    if normalize == "none" or (normalize == "auto" and has_box):
        return ds
    if normalize != "auto" and not isinstance(normalize, Normalization):
        raise DataError(path, "normalize", f"must be 'auto', 'none' or a Normalization, got {normalize!r}")
    return normalize_dataset(ds, normalize if isinstance(normalize, Normalization) else None, poses, has_box, path)


def _json_path(path: Path, split: str) -> Path:
    """The transforms file of `split` for a dataset folder or file."""
    if path.is_dir():
        if (path / f"transforms_{split}.json").is_file():
            return path / f"transforms_{split}.json"
        if (path / "transforms.json").is_file():
            return path / "transforms.json"
        raise MissingSplitError(path, "path", f"no transforms_{split}.json or transforms.json in this folder")
    if not path.is_file():
        raise DataError(path, "path", "dataset path does not exist")
    return path


def _load_transforms(path: Path, split: str, downscale: int, budget: Budget) -> MultiViewDataset:
    """A Blender or nerfstudio transforms file in its own frame."""
    if not isinstance(downscale, int) or downscale < 1:
        raise DataError(path, "downscale", f"must be a positive integer, got {downscale!r}")
    doc = JsonDoc(path)
    blender = path.name.startswith("transforms_")
    try:
        background = np.asarray(doc.data.get("background", [1.0, 1.0, 1.0]), dtype=np.float32)
    except (ValueError, TypeError, OverflowError, RecursionError):
        background = np.zeros(0)
    if background.shape != (3,) or not np.isfinite(background).all():
        raise doc.error("background", "must be three finite numbers")
    depth_scale = doc.number(doc.data, "depth_unit_scale_factor", "depth_unit_scale_factor", default=1e-3,
                             positive=True)

    images, masks, c2ws, intrinsics, names, lenses = [], [], [], [], [], []
    buffers: dict[str, list[np.ndarray]] = {}
    size: tuple[int, int] | None = None
    frames = _split_frames(doc, split, blender)
    _check_budget(doc, frames, budget)
    for i, frame in frames:
        where = f"frames[{i}]"
        img_path = doc.file(frame, "file_path", f"{where}.file_path", suffixes=("", ".png"))
        rgb, alpha = _load_rgb(img_path, f"{where}.file_path", background)
        h, w = rgb.shape[:2]
        dw = int(doc.number(frame, "w", f"{where}.w", default=doc.number(doc.data, "w", "w", default=w)))
        dh = int(doc.number(frame, "h", f"{where}.h", default=doc.number(doc.data, "h", "h", default=h)))
        if (dw, dh) != (w, h):
            raise DataError(img_path, f"{where}.file_path", f"image is {w}x{h} but the file declares w={dw}, h={dh}")
        if size is not None and (w, h) != size:
            raise DataError(img_path, f"{where}.file_path", f"image is {w}x{h}, earlier frames are {size[0]}x{size[1]}")
        size = (w, h)
        c2ws.append(opengl_to_opencv(doc.matrix(frame, "transform_matrix", f"{where}.transform_matrix")))
        intrinsics.append(_frame_intrinsics(doc, frame, where, w, h))
        lenses.append((where, *frame_lens(path, doc.data, frame, where)))
        images.append(rgb)
        masks.append(alpha)
        names.append(Path(frame["file_path"]).stem)
        for key, kind in _EXTRA_BUFFERS.items():
            if key in frame:
                buf_path = doc.file(frame, key, f"{where}.{key}")
                arr = _load_buffer(kind, buf_path, f"{where}.{key}", depth_scale)
                expected = (h, w, 3) if kind == "normals" else (h, w)
                if arr.shape != expected:
                    problem = f"shape {arr.shape} does not match the image {expected}"
                    raise DataError(buf_path, f"{where}.{key}", problem)
                buffers.setdefault(kind, []).append(arr)
    n = len(images)
    for kind, arrays in buffers.items():
        if len(arrays) != n:
            raise doc.error(f"frames[*].{next(k for k, v in _EXTRA_BUFFERS.items() if v == kind)}",
                            "given for some frames but not all")
    if "masks" not in buffers and all(m is not None for m in masks):
        buffers["masks"] = masks
    w, h = size
    if w % downscale or h % downscale:
        raise DataError(path, "downscale", f"{w}x{h} images are not divisible by {downscale}")
    cameras = Cameras(torch.stack(c2ws), torch.stack(intrinsics), w, h, *stack_lenses(path, lenses))
    _check_rays(doc, cameras, [i for i, _ in frames])
    aabb = _aabb(doc, cameras)
    cameras = cameras.scaled(1.0 / downscale)
    data = {kind: _downscale(torch.from_numpy(np.stack(arrs)), downscale, kind) for kind, arrs in buffers.items()}
    if "ply_file_path" in doc.data:  # nerfstudio's sparse points (colmap_to_json's sparse_pc.ply)
        points, colors = read_points_ply(doc.file(doc.data, "ply_file_path", "ply_file_path"))
        data["points"] = torch.from_numpy(points)
        data["point_colors"] = torch.from_numpy(colors).float() / 255 if colors is not None else torch.full_like(
            data["points"], 0.5)
    return MultiViewDataset(cameras=cameras, images=_downscale(torch.from_numpy(np.stack(images)), downscale, "images"),
                            aabb=aabb, background=torch.from_numpy(background), names=names, **data)


def _frame_intrinsics(doc: JsonDoc, frame: dict, where: str, w: int, h: int) -> torch.Tensor:
    """K from per-frame or top-level fl_x/fl_y/cx/cy, else from camera_angle_x (Blender)."""
    top = doc.data
    if "fl_x" in frame or "fl_x" in top:
        src, loc = (frame, where + ".") if "fl_x" in frame else (top, "")
        fx = doc.number(src, "fl_x", f"{loc}fl_x", positive=True)
        fy = doc.number(src, "fl_y", f"{loc}fl_y", default=fx, positive=True)
    elif "camera_angle_x" in top:
        angle = doc.number(top, "camera_angle_x", "camera_angle_x", positive=True)
        if angle >= math.pi:
            raise doc.error("camera_angle_x", f"must be below pi radians, got {angle}")
        fx = fy = 0.5 * w / math.tan(0.5 * angle)
    else:
        raise doc.error("fl_x", "missing (and no camera_angle_x to derive it from)")
    src = frame if "cx" in frame else top
    cx = doc.number(src, "cx", "cx", default=w / 2)
    cy = doc.number(frame if "cy" in frame else top, "cy", "cy", default=h / 2)
    with np.errstate(over="ignore", under="ignore"):
        values = np.array([fx, fy, cx, cy], dtype=np.float64).astype(np.float32)
    for name, value, positive in zip(("fl_x", "fl_y", "cx", "cy"), values, (True, True, False, False), strict=True):
        if not np.isfinite(value) or (positive and not value > 0):
            field = f"{where}.{name}" if name in frame else name
            raise doc.error(field, f"is {value} in float32, the dtype training uses (overflow or underflow)")
    return torch.tensor([[values[0], 0.0, values[2]], [0.0, values[1], values[3]], [0.0, 0.0, 1.0]])


def _check_rays(doc: JsonDoc, cameras: Cameras, frame_indices: list[int]) -> None:
    """Every camera's rays through its image corners are finite unit vectors in float32 (rays are affine
    in the pixel before normalising, so every other ray is then finite too)."""
    w, h = cameras.width, cameras.height
    corners = torch.tensor([[0.5, 0.5], [w - 0.5, 0.5], [0.5, h - 0.5], [w - 0.5, h - 0.5]])
    dirs = torch.einsum("nij,npj->npi", cameras.c2w[:, :3, :3], cameras.pixel_dirs_camera(corners.expand(len(cameras),
                                                                                                           -1, -1)))
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    bad = ~torch.isfinite(dirs).all(dim=-1).all(dim=-1)
    if bad.any():
        i = frame_indices[int(bad.nonzero()[0, 0])]
        raise doc.error(f"frames[{i}]", "the camera's rays are not finite in float32 (its intrinsics or pose "
                        "overflow)")


def _aabb(doc: JsonDoc, cameras: Cameras) -> torch.Tensor:
    """The file's `aabb`, else a box around the point the cameras look at (half the camera distance)."""
    if "aabb" in doc.data:
        try:
            box = torch.tensor(doc.data["aabb"], dtype=torch.float32)
        except (ValueError, TypeError, RuntimeError, OverflowError, RecursionError):
            raise doc.error("aabb", "must be [[xmin, ymin, zmin], [xmax, ymax, zmax]]") from None
        if box.shape != (2, 3) or not torch.isfinite(box).all() or (box[1] <= box[0]).any():
            raise doc.error("aabb", "must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with min < max")
        return box
    centers = cameras.centers
    half = 0.5 * centers.norm(dim=-1).mean()
    if not torch.isfinite(half) or half <= 0:
        raise doc.error("aabb", "missing, and the camera positions give no finite scene box to use instead")
    return torch.stack([-half.expand(3), half.expand(3)])


def _load_colmap(path: Path, split: str, downscale: int) -> tuple[MultiViewDataset, colmap.ColmapModel]:
    """A COLMAP project (scene3d.data.colmap) and its model: nerfstudio's every-8th-image split, points kept."""
    if not isinstance(downscale, int) or downscale < 1:
        raise DataError(path, "downscale", f"must be a positive integer, got {downscale!r}")
    model = colmap.read_model(path)
    chosen = colmap.split_images(model, split)
    cameras = colmap.model_cameras(model, chosen)
    folder = colmap.image_folder(model, path)
    images, masks = [], []
    for im in chosen:
        file = (folder / im.name).resolve()
        if not file.is_relative_to(folder.resolve()) or not file.is_file():
            raise DataError(folder / im.name, f"image {im.id}.name", "image file does not exist in images/")
        rgb, alpha = _load_rgb(file, f"image {im.id}.name", np.ones(3, np.float32))
        if rgb.shape[:2] != (cameras.height, cameras.width):
            raise DataError(file, f"image {im.id}.name", f"image is {rgb.shape[1]}x{rgb.shape[0]} but its camera "
                            f"is {cameras.width}x{cameras.height}")
        images.append(rgb)
        masks.append(alpha)
    if cameras.width % downscale or cameras.height % downscale:
        raise DataError(path, "downscale", f"{cameras.width}x{cameras.height} images are not divisible by {downscale}")
    points = torch.from_numpy(model.points).float()
    if len(points):
        lo, hi = torch.quantile(points, torch.tensor([0.01, 0.99]), dim=0)
        pad = 0.1 * (hi - lo) + 1e-3  # a flat or single-point cloud still gets a box
        aabb = torch.stack([lo - pad, hi + pad])
    else:
        half = 0.5 * cameras.centers.norm(dim=-1).mean()
        aabb = torch.stack([-half.expand(3), half.expand(3)])
    extra = {}
    if all(m is not None for m in masks):
        extra["masks"] = _downscale(torch.from_numpy(np.stack(masks)), downscale, "masks")
    ds = MultiViewDataset(cameras=cameras.scaled(1.0 / downscale), aabb=aabb,
                          names=[Path(im.name).stem for im in chosen],
                          images=_downscale(torch.from_numpy(np.stack(images)), downscale, "images"),
                          points=points, point_colors=torch.from_numpy(model.colors).float() / 255, **extra)
    return ds, model
