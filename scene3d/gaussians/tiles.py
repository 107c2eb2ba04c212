"""Tile binning: every (image, tile, Gaussian) overlap as one sorted list of pairs.

Pairs are sorted by (image, tile) and, inside a tile, front to back by depth, so each tile's
Gaussians are a contiguous, depth-ordered run `pair_ids[tile_start[t] : tile_start[t] + tile_count[t]]`.

A Gaussian's screen box is the smaller of its 3.33-sigma radius (gsplat's) and the exact box of the
ellipse where `opacity * exp(-power) >= 1/255`; outside that ellipse every pixel skips the Gaussian
(alpha < 1/255), so the tighter box changes no pixel and saves work for faint Gaussians.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0


@dataclass
class TileBins:
    tile_size: int
    tiles_x: int
    tiles_y: int
    n_images: int
    pair_ids: Int[Tensor, " M"]  # flat ids image * N + gaussian, sorted by (tile, depth)
    tile_start: Int[Tensor, " T"]  # T = n_images * tiles_y * tiles_x
    tile_count: Int[Tensor, " T"]

    @property
    def n_tiles(self) -> int:
        return self.n_images * self.tiles_y * self.tiles_x


def screen_extent(radii: Tensor, cov2d: Tensor, opacities: Tensor) -> Float[Tensor, "C N 2"]:
    """Half-extents in pixels of the region where a Gaussian can reach alpha >= 1/255."""
    level = torch.log((255.0 * opacities).clamp_min(1e-12))  # power threshold; <= 0: never visible
    diag = torch.stack([cov2d[..., 0], cov2d[..., 2]], dim=-1)
    exact = torch.sqrt((2 * level[..., None]).clamp_min(0) * diag) * 1.0001 + 1e-3
    ext = torch.minimum(radii.to(exact.dtype), exact)
    return torch.where((level > 0)[..., None] & (radii > 0), ext, torch.zeros_like(ext))


@torch.no_grad()
def bin_gaussians(means2d: Float[Tensor, "C N 2"], extent: Float[Tensor, "C N 2"], depths: Float[Tensor, "C N"],
                  width: int, height: int, tile_size: int = 16) -> TileBins:
    """Sorted (tile, depth) pair lists for C images of N Gaussians with screen half-extents `extent`."""
    n_img, n = depths.shape
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    lo = torch.floor((means2d - extent) / tile_size)
    hi = torch.ceil((means2d + extent) / tile_size)
    x0, x1 = lo[..., 0].clamp(0, tiles_x).long(), hi[..., 0].clamp(0, tiles_x).long()
    y0, y1 = lo[..., 1].clamp(0, tiles_y).long(), hi[..., 1].clamp(0, tiles_y).long()
    visible = (extent > 0).all(-1)
    counts = torch.where(visible, (x1 - x0) * (y1 - y0), torch.zeros_like(x0)).flatten()

    # Front to back inside each image, then a stable sort by tile keeps that order per tile.
    order = torch.argsort(depths.flatten(), stable=True)
    order = order[counts[order] > 0]
    n_per = counts[order]
    flat = torch.repeat_interleave(order, n_per)
    first = torch.cumsum(n_per, 0) - n_per
    local = torch.arange(len(flat), device=flat.device) - torch.repeat_interleave(first, n_per)
    w = (x1 - x0).flatten()[flat]
    tx = x0.flatten()[flat] + local % w
    ty = y0.flatten()[flat] + torch.div(local, w, rounding_mode="floor")
    key = (torch.div(flat, n, rounding_mode="floor") * tiles_y + ty) * tiles_x + tx
    key, perm = torch.sort(key, stable=True)
    n_tiles = n_img * tiles_y * tiles_x
    tile_count = torch.bincount(key, minlength=n_tiles)
    tile_start = torch.cumsum(tile_count, 0) - tile_count
    return TileBins(tile_size, tiles_x, tiles_y, n_img, flat[perm], tile_start, tile_count)
