"""A tiny analytic scene for the field and renderer tests: two soft blobs of known density and
colour inside [-1, 1]^3, rendered by the volume renderer itself into a small multi-view dataset."""

from __future__ import annotations

import torch
from torch import Tensor

from scene3d.cameras import orbit_cameras
from scene3d.data.dataset import MultiViewDataset
from scene3d.fields.base import Field, FieldConfig
from scene3d.render import render_image

CENTERS = torch.tensor([[-0.35, 0.0, 0.0], [0.4, 0.1, 0.05]])
RADII = torch.tensor([0.35, 0.25])
COLORS = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.4, 0.9]])


class BlobField(Field):
    """Densities 40 inside two spheres (soft edges), zero outside; colour per sphere."""

    def __init__(self, color_dim: int = 3):
        super().__init__(FieldConfig(color_dim=color_dim))
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # so the field has a parameter and a device

    def embed(self, x: Tensor) -> Tensor:
        dist = (x[..., None, :] - CENTERS).norm(dim=-1)                   # [...,2]
        return torch.sigmoid((RADII - dist) * 60.0)

    def decode_density(self, features: Tensor) -> Tensor:
        return torch.log(40.0 * features.sum(-1).clamp(0, 1) + 1e-6) + self.anchor

    def decode(self, features: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        share = features / features.sum(-1, keepdim=True).clamp_min(1e-6)
        rgb = share @ COLORS
        if self.config.color_dim != 3:
            rgb = rgb.repeat_interleave(self.config.color_dim // 3 + 1, -1)[..., : self.config.color_dim]
        return self.decode_density(features), rgb


def blob_views(n: int, size: int = 16, offset_deg: float = 0.0, elevation: float = 25.0) -> MultiViewDataset:
    cameras = orbit_cameras(n, 3.0, elevation_deg=elevation, fov_x_deg=45.0, width=size, height=size,
                            azimuth_offset_deg=offset_deg)
    out = render_image(BlobField(), cameras, 128, background=torch.ones(3))
    return MultiViewDataset(cameras, out["rgb"], torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]),
                            torch.ones(3), masks=out["accumulation"] > 0.5)


def psnr(a: Tensor, b: Tensor) -> float:
    return float(-10 * torch.log10((a - b).square().mean()))
