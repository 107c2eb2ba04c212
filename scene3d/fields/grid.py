"""A dense voxel grid of densities and spherical-harmonics colour coefficients (Plenoxels-like,
Fridovich-Keil et al. 2022), trilinearly interpolated, with total-variation regularisation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.fields.base import Field, FieldConfig, register_field
from scene3d.fields.encoding import sh_dim, spherical_harmonics


def voxel_resolution(n_voxels: float, aabb: Tensor) -> tuple[int, int, int]:
    """Per-axis sizes (x, y, z) of a grid of about n_voxels cubic voxels filling the box."""
    extent = aabb[1] - aabb[0]
    side = (extent.prod().item() / n_voxels) ** (1.0 / 3.0)
    return tuple(max(2, math.ceil(e / side)) for e in extent.tolist())


def sample_grid(volume: Float[Tensor, "1 C Z Y X"], coords: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B C"]:
    """Trilinear interpolation of a [1,C,Z,Y,X] volume at coords in [-1, 1]^3 (x, y, z order)."""
    batch = coords.shape[:-1]
    grid = rearrange(coords.reshape(-1, 3), "p c -> 1 p 1 1 c")
    out = F.grid_sample(volume, grid, mode="bilinear", align_corners=True)
    return rearrange(out, "1 c p 1 1 -> p c").reshape(*batch, -1)


def total_variation(volume: Float[Tensor, "1 C Z Y X"]) -> Tensor:
    """Mean squared difference between neighbouring voxels along the three axes."""
    return sum(volume.diff(dim=d).square().mean() for d in (2, 3, 4))


@dataclass
class GridFieldConfig(FieldConfig):
    """Small CPU default (about 64^3 voxels, SH degree 1); `paper()` is 128^3 voxels with SH degree 2
    (Plenoxels' 9 coefficients per channel). `resolution` means resolution^3 voxels spread over the
    box in proportion to its sides. Adam at 0.1 as in DVGO (Plenoxels uses RMSprop)."""

    resolution: int = 64
    sh_degree: int = 1
    init_density: float = 0.1
    tv_density: float = 1e-4
    tv_color: float = 1e-4
    lr: float = 0.1

    @classmethod
    def paper(cls, **overrides: Any) -> GridFieldConfig:
        return cls(**{"resolution": 128, "sh_degree": 2, **overrides})


@register_field("grid")
class GridField(Field):
    """embed: trilinear (density, SH coefficients) at x; decode: sigmoid(SH(dir) . coefficients)."""

    Config = GridFieldConfig
    config: GridFieldConfig

    def __init__(self, config: GridFieldConfig):
        super().__init__(config)
        rx, ry, rz = voxel_resolution(config.resolution**3, self.aabb)
        self.n_sh = sh_dim(config.sh_degree)
        self.density_grid = nn.Parameter(torch.full((1, 1, rz, ry, rx), config.init_density))
        self.color_grid = nn.Parameter(torch.zeros(1, config.color_dim * self.n_sh, rz, ry, rx))

    def embed(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B F"]:
        coords = self.normalize(x) * 2 - 1
        density, color = sample_grid(self.density_grid, coords), sample_grid(self.color_grid, coords)
        return torch.cat([density, color], dim=-1)

    def decode_density(self, features: Float[Tensor, "*B F"]) -> Float[Tensor, "*B"]:
        return features[..., 0]

    def decode(self, features: Float[Tensor, "*B F"], dirs: Float[Tensor, "*B 3"]
               ) -> tuple[Float[Tensor, "*B"], Float[Tensor, "*B C"]]:
        coeffs = rearrange(features[..., 1:], "... (c k) -> ... c k", k=self.n_sh)
        basis = spherical_harmonics(dirs, self.config.sh_degree)
        rgb = torch.sigmoid(torch.einsum("...ck,...k->...c", coeffs, basis))
        return self.decode_density(features), rgb

    def regularization(self) -> Tensor:
        return (self.config.tv_density * total_variation(self.density_grid)
                + self.config.tv_color * total_variation(self.color_grid))
