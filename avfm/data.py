"""Scene datasets for active vision: `SceneSet` (images [N, 3, H, W] in [0, 1], optional dense labels
[N, H, W] and scene classes [N]), from the synthetic 2D scenes of `scene3d.data.scenes2d`, from an
image folder (ADE20K-style `images/` + `annotations/` layout or a flat folder), from the real
photographs scikit-image ships (`photos`, no labels), or from `toy_scenes` (a tiny self-contained
generator used by the tests).

Teacher targets are computed once (`precompute_targets`), written shard by shard to safetensors
files (`write_target_shards`) and streamed from them during training (`TargetShards`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from scene3d.checkpoint import atomic_write
from scene3d.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class SceneSet:
    images: Tensor  # [N, 3, H, W] float in [0, 1]
    labels: Tensor | None = None  # [N, H, W] long
    scene_class: Tensor | None = None  # [N] long
    num_classes: int | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index) -> SceneSet:
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return SceneSet(self.images[index], pick(self.labels), pick(self.scene_class), self.num_classes)

    def split(self, n_first: int) -> tuple[SceneSet, SceneSet]:
        return self.subset(slice(0, n_first)), self.subset(slice(n_first, None))


def synthetic_scenes(n: int, resolution: int, seed: int = 0) -> SceneSet:
    """The project's procedural 2D scenes with dense semantic labels (`scene3d.data.scenes2d`)."""
    from scene3d.data.scenes2d import make_scene_images

    s = make_scene_images(n, resolution, seed)
    return SceneSet(s.images.float(), s.labels.long(), s.scene_class.long(), int(s.num_classes))


def toy_scenes(n: int, resolution: int, seed: int = 0, num_shapes: int = 3) -> SceneSet:
    """Tiny stand-in: a coloured background with discs (class 1) and squares (class 2); the scene
    class is the majority shape. Deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
    images = torch.empty(n, 3, resolution, resolution)
    labels = torch.zeros(n, resolution, resolution, dtype=torch.long)
    classes = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        images[i] = torch.rand(3, 1, 1, generator=g) * 0.5
        counts = [0, 0]
        for _ in range(num_shapes):
            kind = int(torch.randint(2, (1,), generator=g))
            cy, cx = (torch.rand(2, generator=g) * resolution).tolist()
            r = float(torch.empty(1).uniform_(0.08, 0.22, generator=g)) * resolution
            if kind == 0:
                mask = (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
            else:
                mask = ((ys - cy).abs() <= r) & ((xs - cx).abs() <= r)
            colour = 0.5 + 0.5 * torch.rand(3, 1, generator=g)
            images[i][:, mask] = colour
            labels[i][mask] = kind + 1
            counts[kind] += 1
        classes[i] = int(counts[1] > counts[0])
    return SceneSet(images, labels, classes, num_classes=3)


def read_square_image(path: Path, resolution: int, labels: bool = False) -> Tensor:
    """An image file (RGB [3, r, r] in [0, 1]) or label map ([r, r] long), centre-cropped square and resized."""
    import imageio.v3 as iio
    import numpy as np

    from scene3d.data.formats import _check_image_size

    field = "annotation" if labels else "image"
    _check_image_size(path, field)
    try:
        array = iio.imread(path)
    except Exception as err:  # noqa: BLE001 - imageio raises many types for unreadable files
        raise DataError(path, field, f"cannot be read ({type(err).__name__}: {err})") from None
    if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        raise DataError(path, field, f"unsupported image of dtype {array.dtype} and shape {array.shape}")
    if array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4):
        raise DataError(path, field, f"image has {array.shape[-1]} channels; expected 1 to 4")
    t = torch.from_numpy(array.astype(np.int64 if labels else np.float32))
    if labels:
        t = t[..., 0] if t.ndim == 3 else t
        t = t.float()[None, None]
    else:
        if t.ndim == 2:
            t = t[..., None]
        t = t[..., :3] if t.shape[-1] >= 3 else t[..., :1].expand(*t.shape[:2], 3)  # grey (+alpha): grey
        t = t.permute(2, 0, 1)[None] / (65535.0 if array.dtype.itemsize == 2 else 255.0)
    h, w = t.shape[-2:]
    side = min(h, w)
    t = t[..., (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    if labels:
        return F.interpolate(t, size=(resolution, resolution), mode="nearest")[0, 0].long()
    size = (resolution, resolution)
    return F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def image_folder(root: str | Path, resolution: int, limit: int | None = None) -> SceneSet:
    """Images from `root/images` (or `root` itself), centre-cropped square and resized; dense labels
    from `root/annotations/<stem>.png` when every image has one (ADE20K layout: 0 = ignore)."""
    root = Path(root)
    folder = root / "images" if (root / "images").is_dir() else root
    if not folder.is_dir():
        raise DataError(root, "images", "folder not found")
    if not isinstance(resolution, int) or resolution < 1:
        raise DataError(root, "resolution", f"must be a positive integer, got {resolution!r}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:limit]
    if not files:
        raise DataError(folder, "images", f"no image files ({', '.join(IMAGE_SUFFIXES)})")
    images = torch.stack([read_square_image(p, resolution) for p in files])
    ann = [root / "annotations" / f"{p.stem}.png" for p in files]
    labels = None
    if all(a.is_file() for a in ann):
        labels = torch.stack([read_square_image(a, resolution, labels=True) for a in ann])
    num_classes = None if labels is None else int(labels.max()) + 1
    return SceneSet(images.clamp(0, 1), labels, None, num_classes)


# scikit-image's bundled colour photographs: name -> file in skimage.data.data_dir (inside the package, no download)
PHOTOS = {"astronaut": "astronaut.png", "coffee": "coffee.png", "chelsea": "chelsea.png", "rocket": "rocket.jpg",
          "hubble_deep_field": "hubble_deep_field.jpg", "immunohistochemistry": "ihc.png",
          "motorcycle_left": "motorcycle_left.png", "retina": "retina.jpg"}


def photo_paths(names: tuple[str, ...] = tuple(PHOTOS)) -> list[Path]:
    """The files of scikit-image's photographs `names` (scikit-image must be installed)."""
    try:
        from skimage.data import data_dir
    except ImportError:
        raise DataError(None, "photos", "the photographs come with scikit-image: pip install scikit-image") from None
    unknown = [n for n in names if n not in PHOTOS]
    if unknown:
        raise DataError(None, "photos", f"unknown photographs {unknown}; known: {', '.join(PHOTOS)}")
    paths = [Path(data_dir) / PHOTOS[n] for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(data_dir, "photos", f"this scikit-image has no bundled {missing}")
    return paths


def photos(n: int, resolution: int, seed: int = 0) -> SceneSet:
    """Real photographs: the first `len(PHOTOS)` are the photographs centre-cropped square; more are random
    square crops (half to full side, seeded) of them, for training on real images."""
    paths = photo_paths()
    g = torch.Generator().manual_seed(seed)
    full = [read_square_image(p, 4 * resolution) for p in paths]
    images = []
    for i in range(n):
        image = full[i % len(full)]
        if i >= len(full):
            side = int(image.shape[-1] * float(torch.empty(1).uniform_(0.5, 1.0, generator=g)))
            y, x = (torch.randint(image.shape[-1] - side + 1, (2,), generator=g)).tolist()
            image = image[:, y : y + side, x : x + side]
        images.append(F.interpolate(image[None], size=(resolution, resolution), mode="bilinear", antialias=True,
                                    align_corners=False)[0])
    return SceneSet(torch.stack(images).clamp(0, 1))


SOURCES = {"synthetic": synthetic_scenes, "toy": toy_scenes, "photos": photos}


def load_scenes(source: str, n: int, resolution: int, seed: int = 0, path: str | None = None) -> SceneSet:
    """`source` is `synthetic`, `toy` or `folder` (then `path` is the folder)."""
    if source == "folder":
        if path is None:
            raise DataError(None, "path", "the 'folder' source needs a path")
        return image_folder(path, resolution, limit=n)
    if source not in SOURCES:
        raise KeyError(f"unknown scene source '{source}'; known: {[*SOURCES, 'folder']}")
    return SOURCES[source](n, resolution, seed)


# --------------------------------------------------------------------------------------------------
# Teacher targets


@torch.no_grad()
def precompute_targets(teacher, images: Tensor, grid: int, batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """Teacher patch embeddings resampled to grid x grid [N, grid^2, D] and CLS [N, D], fp32."""
    patches, cls = [], []
    for start in range(0, len(images), batch_size):
        out = teacher(images[start : start + batch_size])
        patches.append(out.resampled(grid).float())
        cls.append(out.cls.float())
    return torch.cat(patches), torch.cat(cls)


def write_target_shards(teacher, images: Tensor, grid: int, folder: str | Path, shard_size: int = 4096,
                        batch_size: int = 32) -> TargetShards:
    """Compute the teacher targets shard by shard (never all of them in memory) and write
    `shard_00000.safetensors`, ... of `shard_size` scenes each (fp16, each file atomic). Shards
    already on disk with the right shapes are kept, so an interrupted precompute resumes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(math.ceil(len(images) / shard_size)):
        chunk = images[k * shard_size : (k + 1) * shard_size]
        path = folder / f"shard_{k:05d}.safetensors"
        if path.is_file() and _shard_rows(path) == len(chunk):
            continue
        patches, cls = precompute_targets(teacher, chunk, grid, batch_size)
        tensors = {"patches": patches.half().contiguous(), "cls": cls.half().contiguous()}
        atomic_write(path, lambda f, t=tensors: f.write(save(t)))
    return TargetShards(folder)


def _shard_rows(path: Path) -> int | None:
    """Scenes in a target shard, None when the file is not a readable shard."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if {"patches", "cls"} - set(f.keys()):
                return None
            return f.get_slice("patches").get_shape()[0]
    except (OSError, ValueError, RuntimeError, SafetensorError):
        return None


class TargetShards:
    """Teacher targets in `folder/shard_*.safetensors`, read row by row on demand (memory-mapped):
    `targets[idx]` -> (patches [B, G*G, D], cls [B, D]) in fp32, for any index tensor."""

    def __init__(self, folder: str | Path):
        self.paths = sorted(Path(folder).glob("shard_*.safetensors"))
        if not self.paths:
            raise DataError(folder, "shard_*.safetensors", "no target shards")
        self.files = []
        for path in self.paths:
            if _shard_rows(path) is None:
                raise DataError(path, "patches/cls", "not a readable target shard")
            self.files.append(safe_open(str(path), framework="pt"))
        rows = [f.get_slice("patches").get_shape()[0] for f in self.files]
        self.offsets = torch.tensor([0, *rows]).cumsum(0)
        self.patch_shape = tuple(self.files[0].get_slice("patches").get_shape()[1:])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        shard = torch.searchsorted(self.offsets, idx, right=True) - 1
        rows = idx - self.offsets[shard]
        patches, cls = [], []
        for k, r in zip(shard.tolist(), rows.tolist(), strict=True):
            patches.append(self.files[k].get_slice("patches")[r : r + 1])
            cls.append(self.files[k].get_slice("cls")[r : r + 1])
        return torch.cat(patches).float(), torch.cat(cls).float()


@dataclass
class TensorTargets:
    """Teacher targets held in memory, indexed like `TargetShards`."""

    patches: Tensor  # [N, G*G, D]
    cls: Tensor  # [N, D]

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        return self.patches[idx], self.cls[idx]
