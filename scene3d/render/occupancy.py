"""An occupancy grid (Instant-NGP's density bitfield) to skip empty space, in pure torch.

A coarse grid over the field's box keeps an exponential moving maximum of the density measured at
random points in each cell; cells above a threshold are occupied. Samples in free cells are never
sent to the field. During training the bitfield is dilated by one cell so that thin structures near
a cell border are not lost; `render_occupancy` measures a converged field once on a finer grid for
rendering. `render_rays(..., occupancy=None)` is the non-skipping reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.config import Range


@dataclass
class OccupancyGridConfig:
    """resolution: cells per axis; decay: EMA factor per update (Instant-NGP's 0.95 is meant for
    35k-step runs; 0.8 forgets the initial densities within a few hundred CPU steps);
    min_optical_thickness: a cell is free when the optical thickness of one render step in it,
    density x (box diagonal / render_samples), stays below this (Instant-NGP's and nerfacc's 0.01;
    capped by the mean density, as in Instant-NGP); render_samples: samples per ray of the renderer
    the grid serves (fields.train sets it to its n_samples); update_every: steps between updates;
    warmup_steps: the initial steps during which every cell is re-measured (afterwards a quarter
    of the cells at random plus a quarter of the occupied ones, as in Instant-NGP) and, unlike
    Instant-NGP, nothing is skipped yet: with the small batches of a CPU run a field can briefly
    lose all its density early on, and a grid pruned then would never let it recover."""

    resolution: Annotated[int, Range(1, 1024)] = 32
    decay: Annotated[float, Range(0, 1)] = 0.8
    min_optical_thickness: Annotated[float, Range(0)] = 0.01
    render_samples: Annotated[int, Range(1)] = 64
    update_every: Annotated[int, Range(1)] = 16
    warmup_steps: Annotated[int, Range(0)] = 256
    dilate: bool = True
    chunk: Annotated[int, Range(1)] = 65536


class OccupancyGrid(nn.Module):
    """Density EMA [R^3] and occupancy bitfield [R,R,R] (z, y, x) over an axis-aligned box."""

    def __init__(self, aabb: Float[Tensor, "2 3"], config: OccupancyGridConfig | None = None):
        super().__init__()
        self.config = config or OccupancyGridConfig()
        r = self.config.resolution
        self.register_buffer("aabb", aabb.detach().clone().float().reshape(2, 3))
        self.step_size = float((self.aabb[1] - self.aabb[0]).norm()) / self.config.render_samples
        self.register_buffer("density", torch.zeros(r**3))
        self.register_buffer("bitfield", torch.ones(r, r, r, dtype=torch.bool))
        zz, yy, xx = torch.meshgrid(*(torch.arange(r),) * 3, indexing="ij")
        self.register_buffer("cells", torch.stack([xx, yy, zz], -1).reshape(-1, 3), persistent=False)

    @property
    def occupied_fraction(self) -> float:
        return self.bitfield.float().mean().item()

    def _cell_index(self, x: Float[Tensor, "*B 3"]) -> tuple[Tensor, Tensor]:
        r = self.config.resolution
        u = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((u >= 0) & (u <= 1)).all(dim=-1)
        cell = (u * r).long().clamp(0, r - 1)
        return cell[..., 0] + r * (cell[..., 1] + r * cell[..., 2]), inside

    def occupied(self, x: Float[Tensor, "*B 3"]) -> Tensor:
        """True where x lies in the box and in an occupied cell."""
        index, inside = self._cell_index(x)
        return self.bitfield.flatten()[index] & inside

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], step: int,
               generator: torch.Generator | None = None) -> None:
        """Measure density at one random point in (some) cells and refresh the bitfield."""
        c = self.config
        n = c.resolution**3
        dev = self.density.device
        if step < c.warmup_steps:
            cells = torch.arange(n, device=dev)
        else:
            rand = torch.randint(0, n, (n // 4,), generator=generator, device=dev)
            occ = self.bitfield.flatten().nonzero()[:, 0]
            pick = torch.randint(0, max(len(occ), 1), (n // 4,), generator=generator, device=dev)
            cells = torch.cat([rand, occ[pick]]) if len(occ) else rand
        sigma = self._density_at_random_points(density_fn, cells, generator)
        self.density.mul_(c.decay)
        self.density.scatter_reduce_(0, cells, sigma, reduce="amax")
        if step >= c.warmup_steps:
            self._refresh_bitfield()

    @torch.no_grad()
    def measure(self, density_fn: Callable[[Tensor], Tensor], points_per_cell: int = 4,
                generator: torch.Generator | None = None) -> None:
        """Measure a fixed field from scratch: each cell's density becomes the maximum over
        `points_per_cell` random points in it (no moving average), and the bitfield follows."""
        cells = torch.arange(self.config.resolution**3, device=self.density.device).repeat(points_per_cell)
        sigma = self._density_at_random_points(density_fn, cells, generator)
        self.density.zero_().scatter_reduce_(0, cells, sigma, reduce="amax")
        self._refresh_bitfield()

    def _density_at_random_points(self, density_fn: Callable[[Tensor], Tensor], cells: Tensor,
                                  generator: torch.Generator | None) -> Float[Tensor, " N"]:
        """Density at one uniformly random point in each of `cells` [N] (flat indices)."""
        c = self.config
        jitter = torch.rand(len(cells), 3, generator=generator, device=cells.device)
        x = self.aabb[0] + (self.cells[cells] + jitter) / c.resolution * (self.aabb[1] - self.aabb[0])
        return torch.cat([density_fn(chunk) for chunk in x.split(c.chunk)]).to(self.density)

    def _refresh_bitfield(self) -> None:
        c = self.config
        threshold = min(c.min_optical_thickness / self.step_size, self.density.mean().item())
        bits = rearrange(self.density > threshold, "(z y x) -> z y x", z=c.resolution, y=c.resolution)
        if c.dilate:
            bits = F.max_pool3d(bits[None, None].float(), kernel_size=3, stride=1, padding=1)[0, 0] > 0
        self.bitfield.copy_(bits)


def render_occupancy(density_fn: Callable[[Tensor], Tensor], aabb: Float[Tensor, "2 3"], render_samples: int,
                     resolution: int = 64, points_per_cell: int = 4, dilate: bool = False,
                     generator: torch.Generator | None = None) -> OccupancyGrid:
    """A grid for rendering a converged field, measured once at `points_per_cell` points per cell:
    finer than the training grid and, instead of the one-cell dilation, measured at several points
    per cell, so it hugs the surfaces and the isolated density spikes a hash grid leaves in free
    space block one small cell each instead of a 3x3x3 block of large ones."""
    config = OccupancyGridConfig(resolution=resolution, render_samples=render_samples, dilate=dilate)
    grid = OccupancyGrid(aabb, config).to(aabb.device)
    grid.measure(density_fn, points_per_cell, generator)
    return grid
