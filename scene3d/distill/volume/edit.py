"""Property fusion: edit a teacher, then distil it into another architecture that carries the edit."""

from __future__ import annotations

import copy

import torch
from jaxtyping import Float
from torch import Tensor

from scene3d.fields.grid import GridField


def voxel_positions(grid: GridField) -> Float[Tensor, "V 3"]:
    """World position of every voxel row of `grid.voxels` (vertices on the box corners, x fastest)."""
    rx, ry, rz = grid.resolution
    zz, yy, xx = torch.meshgrid(*(torch.arange(r, device=grid.voxels.device) for r in (rz, ry, rx)), indexing="ij")
    u = torch.stack([xx / (rx - 1), yy / (ry - 1), zz / (rz - 1)], dim=-1).reshape(-1, 3)
    return grid.aabb[0] + u * (grid.aabb[1] - grid.aabb[0])


def erase_box(grid: GridField, lo: tuple[float, float, float], hi: tuple[float, float, float],
              log_density: float = -10.0) -> GridField:
    """A copy of a voxel-grid field whose density pre-activation is `log_density` (empty) at every
    voxel inside the world box [lo, hi]: the region disappears from every render."""
    edited = copy.deepcopy(grid)
    x = voxel_positions(edited)
    inside = ((x >= torch.tensor(lo).to(x)) & (x <= torch.tensor(hi).to(x))).all(dim=-1)
    with torch.no_grad():
        edited.voxels[inside, 0] = log_density
    return edited
