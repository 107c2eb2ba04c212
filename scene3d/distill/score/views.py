"""Cameras around a distilled object and view-dependent prompts (DreamFusion's front / side /
back / overhead by azimuth and elevation)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.diffusion.data import ObjectViews, cameras_at, sample_view_angles

VIEWS = ("front", "side", "back", "overhead")


def view_names(azimuth: Tensor, elevation: Tensor, front_deg: float = 60.0, overhead_deg: float = 60.0) -> list[str]:
    """Per camera: 'overhead' above `overhead_deg` elevation, else 'front' within +-front_deg/2 of
    azimuth 0 (+x), 'back' within +-front_deg/2 of 180, 'side' otherwise. Angles in radians."""
    az = torch.rad2deg(azimuth) % 360
    el = torch.rad2deg(elevation)
    names = []
    for a, e in zip(az.tolist(), el.tolist(), strict=True):
        if e > overhead_deg:
            names.append("overhead")
        elif a < front_deg / 2 or a > 360 - front_deg / 2:
            names.append("front")
        elif abs(a - 180) < front_deg / 2:
            names.append("back")
        else:
            names.append("side")
    return names


def camera_angles(cameras: Cameras, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(azimuth, elevation) radians of camera centres around `target` (z up)."""
    rel = cameras.centers - (torch.zeros(3) if target is None else target).to(cameras.centers)
    return torch.atan2(rel[:, 1], rel[:, 0]), torch.asin((rel[:, 2] / rel.norm(dim=-1)).clamp(-1, 1))


def random_cameras(n: int, size: int, views: ObjectViews | None = None,
                   generator: torch.Generator | None = None) -> tuple[Cameras, list[str]]:
    """n random cameras looking at the origin from the band of `views`, and their view names."""
    views = views or ObjectViews()
    az, el, r = sample_view_angles(n, views, generator)
    return cameras_at(az, el, r, views.fov_x_deg, size), view_names(az, el)


def orbit_views(n: int, size: int, elevation_deg: float = 25.0, views: ObjectViews | None = None) -> Cameras:
    """n cameras of size x size pixels evenly spaced in azimuth at one elevation and the band's mean radius,
    looking at the origin."""
    views = views or ObjectViews()
    az = torch.arange(n) * 2 * math.pi / n
    el = torch.full((n,), math.radians(elevation_deg))
    r = torch.full((n,), sum(views.radius) / 2)
    return cameras_at(az, el, r, views.fov_x_deg, size)
