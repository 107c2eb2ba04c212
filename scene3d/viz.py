"""Turn buffers into pictures: depth, normal, label and feature (PCA) colouring, image grids, contact
sheets, and videos (turntables)."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import matplotlib
import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from scene3d.checkpoint import atomic_write

# Fixed label colours (class 0 = background is black); cycles past its length.
LABEL_PALETTE = torch.tensor([
    [0, 0, 0], [180, 180, 180], [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
], dtype=torch.float32) / 255


def colorize_depth(depth: Float[Tensor, "H W"], mask: Bool[Tensor, "H W"] | None = None,
                   lo: float | None = None, hi: float | None = None, cmap: str = "turbo") -> Float[Tensor, "H W 3"]:
    """Near = warm, far = cool, over the valid range (default: min/max of masked depth); invalid black."""
    mask = depth > 0 if mask is None else mask
    valid = depth[mask]
    lo = float(valid.min()) if lo is None and valid.numel() else (lo or 0.0)
    hi = float(valid.max()) if hi is None and valid.numel() else (hi or 1.0)
    x = ((depth - lo) / max(hi - lo, 1e-8)).clamp(0, 1)
    rgb = torch.from_numpy(matplotlib.colormaps[cmap](1 - x.numpy())[..., :3]).float()
    return torch.where(mask[..., None], rgb, torch.zeros_like(rgb))


def colorize_normals(normals: Float[Tensor, "H W 3"]) -> Float[Tensor, "H W 3"]:
    """Unit normals to RGB as (n + 1) / 2; zero normals stay black."""
    valid = normals.norm(dim=-1, keepdim=True) > 0
    return torch.where(valid, (normals + 1) / 2, torch.zeros_like(normals))


def colorize_labels(labels: Int[Tensor, "H W"]) -> Float[Tensor, "H W 3"]:
    return LABEL_PALETTE[labels.long() % len(LABEL_PALETTE)]


def image_grid(rows: list[list[Float[Tensor, "H W 3"]]], pad: int = 2) -> Float[Tensor, "Ht Wt 3"]:
    """Tile equally sized images into a grid with white gutters."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    out = torch.ones(len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad, 3)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = img[..., :3].float().clamp(0, 1)
    return out


def save_png(path: str | Path, image: Float[Tensor, "H W 3"]) -> Path:
    """Write an RGB float image atomically as 8-bit PNG."""
    data = iio.imwrite("<bytes>", (image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8), extension=".png")
    return atomic_write(path, lambda f: f.write(data))


def contact_sheet(rgb: Float[Tensor, "N H W 3"], depth: Float[Tensor, "N H W"], normals: Float[Tensor, "N H W 3"],
                  semantic: Int[Tensor, "N H W"], mask: Bool[Tensor, "N H W"] | None = None) -> Tensor:
    """One column per view; rows: RGB, depth (shared range), normals, semantic labels."""
    mask = depth > 0 if mask is None else mask
    lo, hi = float(depth[mask].min()), float(depth[mask].max())
    rows = [list(rgb),
            [colorize_depth(d, m, lo, hi) for d, m in zip(depth, mask, strict=True)],
            [colorize_normals(n) for n in normals],
            [colorize_labels(s) for s in semantic]]
    return image_grid(rows)


def pca_rgb(features: Float[Tensor, "*B H W C"],
            mask: Bool[Tensor, "*B H W"] | None = None) -> Float[Tensor, "*B H W 3"]:
    """Features coloured by their first three principal components, shared by every map of the batch
    (so colours compare across maps); each component is scaled to [0, 1] between its 1st and 99th
    percentile over `mask`, pixels outside it are black, and fewer than 3 channels are zero-padded."""
    *lead, c = features.shape
    flat = features.float().reshape(-1, c)
    valid = torch.ones(len(flat), dtype=torch.bool) if mask is None else mask.reshape(-1)
    if valid.sum() < 2:
        return torch.zeros(*lead, 3)
    mean = flat[valid].mean(0)
    _, _, v = torch.linalg.svd(flat[valid] - mean, full_matrices=False)
    comps = (flat - mean) @ v[: min(3, c)].T
    comps = torch.nn.functional.pad(comps, (0, 3 - comps.shape[1]))
    lo = torch.quantile(comps[valid], 0.01, dim=0)
    hi = torch.quantile(comps[valid], 0.99, dim=0)
    rgb = ((comps - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    return torch.where(valid[:, None], rgb, torch.zeros_like(rgb)).reshape(*lead, 3)


def to_uint8(image: Float[Tensor, "*B H W C"]) -> np.ndarray:
    """[0, 1] floats as 8-bit (rounded), on the CPU."""
    return (image.detach().clamp(0, 1) * 255).round().byte().cpu().numpy()


def depth_to_grey(depth: Float[Tensor, "H W"]) -> Float[Tensor, "H W 3"]:
    """Depth normalised to [0, 1] over its positive range, as grey (invalid black)."""
    valid = depth > 0
    lo = depth[valid].min() if valid.any() else depth.new_tensor(0.0)
    hi = depth.max().clamp_min(lo + 1e-6)
    return ((depth - lo) / (hi - lo)).clamp(0, 1)[..., None].expand(*depth.shape, 3) * valid[..., None]


def write_video(path: str | Path, frames: Float[Tensor, "F H W 3"], fps: float = 12, lossless: bool = False) -> Path:
    """Frames as a video (a turntable): `.gif` as an animated GIF; otherwise H.264 (`.mp4`), falling
    back to a GIF beside it when ffmpeg cannot encode. `lossless`: H.264 in RGB at quantiser 0 (the
    decoded frames equal the 8-bit frames exactly; fewer players open it). Returns the path written."""
    path, data = Path(path), to_uint8(frames)
    if lossless:  # no fallback: a GIF would not be lossless
        iio.imwrite(path, data, fps=fps, codec="libx264rgb", macro_block_size=1, pixelformat="rgb24",
                    output_params=["-qp", "0"])
        return path
    if path.suffix.lower() != ".gif":
        try:
            iio.imwrite(path, data, fps=fps, codec="libx264", macro_block_size=1)
            return path
        except Exception:  # noqa: BLE001 - no usable ffmpeg: fall back to a GIF
            path = path.with_suffix(".gif")
    iio.imwrite(path, data, duration=1000 / fps, loop=0)
    return path

