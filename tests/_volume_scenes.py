"""Tiny teachers for the volume-distillation tests: the analytic two-blob scene baked into a voxel
grid (no training needed), its cameras and evaluation views."""

from __future__ import annotations

import torch

from scene3d.cameras import orbit_cameras
from scene3d.distill.volume.active import Shell
from scene3d.distill.volume.distiller import EvalViews
from scene3d.distill.volume.edit import voxel_positions
from scene3d.fields import build_field
from scene3d.fields.encoding import _C0
from scene3d.fields.grid import GridField
from tests._field_scenes import BlobField

SHELL = Shell(radius=(2.8, 3.2), elevation_deg=(15.0, 45.0), target=(0.0, 0.0, 0.0), fov_x_deg=45.0,
              width=16, height=16)


def blob_grid(resolution: int = 24) -> GridField:
    """The blob scene as a grid field (SH degree 0): log-density and colour logits at the vertices."""
    grid = build_field("grid", resolution=resolution, sh_degree=0)
    blob = BlobField()
    x = voxel_positions(grid)
    with torch.no_grad():
        features = blob.embed(x)
        rgb = blob.decode(features, torch.zeros_like(x))[1].clamp(0.02, 0.98)
        grid.voxels[:, 0] = blob.decode_density(features).clamp(-10, 10)
        grid.voxels[:, 1:] = torch.logit(rgb) / _C0
    return grid


def eval_views(n: int = 3, size: int = 16) -> EvalViews:
    cams = orbit_cameras(n, 3.0, elevation_deg=30.0, fov_x_deg=45.0, width=size, height=size,
                         azimuth_offset_deg=10.0)
    return EvalViews(cams, torch.ones(3))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).square().mean().clamp_min(1e-10)))

