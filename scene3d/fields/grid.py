"""A dense voxel grid of densities and spherical-harmonics colour coefficients (Plenoxels-like,
Fridovich-Keil et al. 2022), trilinearly interpolated, with total-variation regularisation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.fields.base import Field, FieldConfig, register_field
from scene3d.fields.encoding import sh_dim, spherical_harmonics, trilinear_interpolate


def voxel_resolution(n_voxels: float, aabb: Tensor) -> tuple[int, int, int]:
    """Per-axis sizes (x, y, z) of a grid of about n_voxels cubic voxels filling the box."""
    extent = aabb[1] - aabb[0]
    side = (extent.prod().item() / n_voxels) ** (1.0 / 3.0)
    return tuple(max(2, math.ceil(e / side)) for e in extent.tolist())


def total_variation(voxels: Float[Tensor, "V C"], res: tuple[int, int, int], n_samples: int,
                    generator: torch.Generator | None = None) -> Tensor:
    """Per-channel [C] mean squared difference to the +x, +y, +z neighbours over random voxels (as
    Plenoxels, which evaluates TV on a random subset each step)."""
    rx, ry, rz = res
    sizes = torch.tensor([rx - 1, ry - 1, rz - 1], device=voxels.device)
    ijk = (torch.rand(n_samples, 3, generator=generator, device=voxels.device) * sizes).long()
    index = ijk[:, 0] + rx * (ijk[:, 1] + ry * ijk[:, 2])
    center = voxels[index]
    return sum((voxels[index + step] - center).square().mean(0) for step in (1, rx, rx * ry))


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
    tv_samples: int = 16384
    lr: float = 0.1

    @classmethod
    def paper(cls, **overrides: Any) -> GridFieldConfig:
        return cls(**{"resolution": 128, "sh_degree": 2, **overrides})


@register_field("grid")
class GridField(Field):
    """One channels-last table of voxels [V, 1 + C K] (density pre-activation, SH coefficients).
    embed: trilinear interpolation at x; decode: sigmoid(SH(dir) . coefficients)."""

    Config = GridFieldConfig
    config: GridFieldConfig

    def __init__(self, config: GridFieldConfig):
        super().__init__(config)
        self.resolution = voxel_resolution(config.resolution**3, self.aabb)
        self.n_sh = sh_dim(config.sh_degree)
        voxels = torch.zeros(math.prod(self.resolution), 1 + config.color_dim * self.n_sh)
        voxels[:, 0] = config.init_density
        self.voxels = nn.Parameter(voxels)

    def embed(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B F"]:
        return trilinear_interpolate(self.voxels, self.resolution, self.normalize(x))

    def decode_density(self, features: Float[Tensor, "*B F"]) -> Float[Tensor, "*B"]:
        return features[..., 0]

    def decode(self, features: Float[Tensor, "*B F"], dirs: Float[Tensor, "*B 3"]
               ) -> tuple[Float[Tensor, "*B"], Float[Tensor, "*B C"]]:
        coeffs = rearrange(features[..., 1:], "... (c k) -> ... c k", k=self.n_sh)
        basis = spherical_harmonics(dirs, self.config.sh_degree)
        rgb = torch.sigmoid(torch.einsum("...ck,...k->...c", coeffs, basis))
        return self.decode_density(features), rgb

    def regularization(self) -> Tensor:
        tv = total_variation(self.voxels, self.resolution, self.config.tv_samples)
        return self.config.tv_density * tv[0] + self.config.tv_color * tv[1:].mean() + self.sparsity_loss()
