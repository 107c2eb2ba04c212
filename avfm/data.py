"""Scene datasets for active vision: `SceneSet` (images [N, 3, H, W] in [0, 1], optional dense labels
[N, H, W] and scene classes [N]), from the synthetic 2D scenes of `scene3d.data.scenes2d`, from an
image folder (ADE20K-style `images/` + `annotations/` layout or a flat folder), or from `toy_scenes`
(a tiny self-contained generator used by the tests).

Teacher targets are computed once (`precompute_targets`) and can be stored as safetensors shards
(`save_target_shards` / `load_target_shards`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save
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


def _read_image(path: Path, resolution: int, labels: bool = False) -> Tensor:
    """One image (RGB [3, r, r] in [0, 1]) or label map ([r, r] long), centre-cropped and resized."""
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
    images = torch.stack([_read_image(p, resolution) for p in files])
    ann = [root / "annotations" / f"{p.stem}.png" for p in files]
    labels = None
    if all(a.is_file() for a in ann):
        labels = torch.stack([_read_image(a, resolution, labels=True) for a in ann])
    num_classes = None if labels is None else int(labels.max()) + 1
    return SceneSet(images.clamp(0, 1), labels, None, num_classes)


SOURCES = {"synthetic": synthetic_scenes, "toy": toy_scenes}


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


def save_target_shards(
    folder: str | Path, patches: Tensor, cls: Tensor, shard_size: int = 4096
) -> list[Path]:
    """Write targets as `shard_00000.safetensors`, ... of `shard_size` scenes each (fp16 on disk)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(math.ceil(len(patches) / shard_size)):
        sl = slice(k * shard_size, (k + 1) * shard_size)
        path = folder / f"shard_{k:05d}.safetensors"
        blob = save({"patches": patches[sl].half().contiguous(), "cls": cls[sl].half().contiguous()})
        paths.append(atomic_write(path, lambda f, blob=blob: f.write(blob)))  # a kill never leaves half a shard
    return paths


def load_target_shards(folder: str | Path):
    """Yield (patches, cls) per shard, in order, as fp32."""
    shards = sorted(Path(folder).glob("shard_*.safetensors"))
    if not shards:
        raise DataError(folder, "shard_*.safetensors", "no target shards")
    for path in shards:
        try:
            data = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise DataError(path, "shard", f"unreadable target shard ({err})") from None
        if "patches" not in data or "cls" not in data:
            raise DataError(path, "patches/cls", "missing tensor in target shard")
        yield data["patches"].float(), data["cls"].float()
