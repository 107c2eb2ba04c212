"""Differentiable targets for the distillation loop that need no other package.

`VoxelTarget` is a deliberately minimal 3D scene: a dense density + colour grid (trilinear,
`grid_sample`) around the origin, volume rendered with uniform samples per ray over a white
background. It exists to exercise score distillation in 3D before the radiance fields
(`scene3d/fields`) and Gaussians (`scene3d/gaussians`) plug into the same `Target` interface.

`TARGETS` maps a name to a factory `seed -> (Target, render_for_eval)`; fields and Gaussian scenes
register here when they land.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.cameras import Cameras
from scene3d.distill.distiller import Target, image_target


class VoxelTarget(nn.Module):
    """density = softplus(grid + blob), colour = sigmoid(grid); grid covers [-extent, extent]^3.

    The density blob (DreamFusion / threestudio's initialisation) starts a soft ball in the middle.
    """

    def __init__(self, resolution: int = 32, extent: float = 0.6, samples: int = 48, blob_density: float = 5.0,
                 blob_radius: float = 0.35, background: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        super().__init__()
        self.grid = nn.Parameter(torch.zeros(1, 4, resolution, resolution, resolution))
        self.extent, self.samples = extent, samples
        self.blob_density, self.blob_radius = blob_density, blob_radius
        self.register_buffer("background", torch.tensor(background), persistent=False)

    def query(self, points: Float[Tensor, "P 3"]) -> tuple[Tensor, Tensor]:
        """(sigma [P], rgb [P,3]) at world points; zero density outside the grid."""
        coords = rearrange(points / self.extent, "p c -> 1 1 1 p c")
        # grid_sample's last coordinate indexes W, so (x, y, z) -> (W, H, D) of a [D,H,W] grid.
        raw = rearrange(F.grid_sample(self.grid, coords, align_corners=True, padding_mode="border"),
                        "1 c 1 1 p -> p c")
        blob = self.blob_density * (1 - points.norm(dim=-1) / self.blob_radius)
        inside = (points.abs() <= self.extent).all(-1)
        sigma = F.softplus(raw[:, 0] + blob) * inside
        return sigma, torch.sigmoid(raw[:, 1:])

    def render(self, cameras: Cameras) -> Float[Tensor, "B 3 H W"]:
        rays = cameras.rays()
        o, d = rays.origins.reshape(-1, 3), rays.dirs.reshape(-1, 3)
        dist = cameras.centers.norm(dim=-1).repeat_interleave(cameras.height * cameras.width)
        r = self.extent * 3**0.5
        near, far = (dist - r).clamp_min(0.05), dist + r
        u = (torch.arange(self.samples, device=o.device) + 0.5) / self.samples
        if self.training:
            u = u + (torch.rand(len(o), self.samples, device=o.device) - 0.5) / self.samples
        t = near[:, None] + (far - near)[:, None] * u
        points = o[:, None] + t[..., None] * d[:, None]
        sigma, rgb = self.query(points.reshape(-1, 3))
        sigma, rgb = sigma.view(len(o), -1), rgb.view(len(o), -1, 3)
        delta = ((far - near) / self.samples)[:, None]
        alpha = 1 - torch.exp(-sigma * delta)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1] + 1e-10], 1), 1)
        weights = alpha * trans
        color = (weights[..., None] * rgb).sum(1) + (1 - weights.sum(1, keepdim=True)) * self.background
        return rearrange(color, "(n h w) c -> n c h w", n=len(cameras), h=cameras.height)


def voxel_target(lr: float = 0.05, **kwargs) -> tuple[Target, VoxelTarget]:
    scene = VoxelTarget(**kwargs)
    return Target(scene.render, torch.optim.Adam(scene.parameters(), lr=lr)), scene


def _image(seed: int) -> tuple[Target, Callable[[Cameras], torch.Tensor]]:
    target, _ = image_target(32, lr=0.05, seed=seed)
    return target, target.render


def _voxels(seed: int) -> tuple[Target, Callable[[Cameras], torch.Tensor]]:
    torch.manual_seed(seed)
    target, scene = voxel_target(lr=0.01)
    with torch.no_grad():
        scene.grid.normal_(0, 0.1)

    def render_eval(cameras: Cameras) -> torch.Tensor:
        scene.eval()  # no sample jitter
        images = scene.render(cameras)
        scene.train()
        return images

    return target, render_eval


TARGETS: dict[str, Callable[[int], tuple[Target, Callable[[Cameras], torch.Tensor]]]] = {
    "image": _image, "voxels": _voxels}
