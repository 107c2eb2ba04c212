"""Scene coordinates shared by glimpses, RoPE and the canvas.

A scene spans (y, x) in [-1, 1]^2, in (row, column) order. The cell (i, j) of an n x m grid sits at
its centre, ((i + 0.5) / n * 2 - 1, (j + 0.5) / m * 2 - 1). A glimpse of centre c and scale s (the
half-side) covers [c - s, c + s]; its own cell (i, j) lands at c + s * grid(n)[i, j] in the scene.
"""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor


def grid_coords(
    height: int, width: int | None = None, device: torch.device | str | None = None
) -> Float[Tensor, "H W 2"]:
    """Cell centres of a uniform height x width grid over [-1, 1]^2; [..., 0] = y, [..., 1] = x. fp32."""
    width = height if width is None else width
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


def glimpse_coords(
    center: Float[Tensor, "B 2"], scale: Float[Tensor, " B"], height: int, width: int | None = None
) -> Float[Tensor, "B H W 2"]:
    """Scene positions of a glimpse's grid cells: center + scale * grid(height, width). fp32."""
    grid = grid_coords(height, width, device=center.device)
    center = rearrange(center.float(), "b c -> b 1 1 c")
    scale = rearrange(scale.float(), "b -> b 1 1 1")
    return center + scale * grid


def flat_grid(height: int, width: int | None = None, device=None) -> Float[Tensor, "N 2"]:
    """`grid_coords` flattened row-major to [H*W, 2]."""
    return rearrange(grid_coords(height, width, device), "h w c -> (h w) c")
