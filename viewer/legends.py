"""Legends for the false-colour buffers: what a colour means (depth range and units, the label colour
key, the frame of the normals). Each is a caption (markdown) and a small picture drawn once.

    legend = depth_legend(1.2, 7.5)   # Legend(caption="**depth** ...", image=uint8 [h,w,3])
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from scene3d.viz import LABEL_PALETTE, colorize_depth, colorize_normals


@dataclass(frozen=True)
class Legend:
    caption: str  # markdown
    image: np.ndarray | None = None  # uint8 [h, w, 3]


def _u8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


@lru_cache(maxsize=1)
def _depth_strip(width: int = 256, height: int = 16) -> np.ndarray:
    ramp = torch.linspace(0.0, 1.0, width)[None].expand(height, -1).contiguous()
    return _u8(colorize_depth(ramp, torch.ones_like(ramp, dtype=torch.bool), 0.0, 1.0))


def depth_legend(near: float, far: float) -> Legend:
    """The depth colour scale: camera z from `near` (left, warm) to `far` (right, cool), scene units."""
    return Legend(f"**depth**: camera z (distance along the view axis) in scene units, from **{near:.3g}** (left "
                  f"colour) to **{far:.3g}** (right), fixed by the scene's bounds; black: nothing hit", _depth_strip())


@lru_cache(maxsize=8)
def labels_legend(names: tuple[str, ...]) -> Legend:
    """The label colour key: one swatch per class, in `names` order (class id = position)."""
    swatch, gap = 24, 4
    image = np.full((swatch, len(names) * (swatch + gap), 3), 255, np.uint8)
    colors = _u8(LABEL_PALETTE[torch.arange(len(names)) % len(LABEL_PALETTE)])
    for i in range(len(names)):
        image[:, i * (swatch + gap):i * (swatch + gap) + swatch] = colors[i]
    key = ", ".join(f"{i} {name} `#{r:02x}{g:02x}{b:02x}`" for i, (name, (r, g, b)) in enumerate(
        zip(names, colors.tolist(), strict=True)))
    return Legend(f"**labels** (swatches left to right): {key}", image)


@lru_cache(maxsize=2)
def normals_legend(frame: str = "world") -> Legend:
    """The normal colour code: (n + 1) / 2 per axis of the `frame`; a disc of every facing direction."""
    size = 48
    v, u = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    inside = u**2 + v**2 <= 1
    n = torch.stack([u, -v, (1 - u**2 - v**2).clamp_min(0).sqrt()], -1) * inside[..., None]
    image = _u8(colorize_normals(n)).copy()
    image[~inside.numpy()] = 255
    return Legend(f"**normals** in the {frame} frame, coloured (n + 1) / 2: red = +x, green = +y, blue = +z "
                  "(the disc: a hemisphere facing +z seen from above)", image)

