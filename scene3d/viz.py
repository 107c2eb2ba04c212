"""Turn buffers into pictures: depth, normal and label colouring, image grids, contact sheets."""

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
