"""Renders of single synthetic objects, one class per object type, from many random views.

Each object is drawn by `make_world` with no ground (a plain background), centred, with a random
size, yaw, material and light; cameras sit on a spherical band around it (`ObjectViews`), which is
also the camera distribution that score distillation samples around a 3D target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from scene3d.cameras import Cameras, look_at, spherical_to_cartesian
from scene3d.config import Ordered, Range
from scene3d.data.synthetic import OBJECT_TYPES, WorldConfig, make_world, render_world


@dataclass
class ObjectViews:
    """Where cameras look at a centred object of bounding radius ~0.5 (world units, z up)."""

    radius: Annotated[tuple[float, float], Range(0, 1e6, above=True), Ordered()] = (1.6, 2.1)
    elevation_deg: Annotated[tuple[float, float], Range(-90, 90), Ordered()] = (5.0, 60.0)
    fov_x_deg: Annotated[float, Range(0, 179, above=True)] = 40.0
    background: Annotated[tuple[float, float, float], Range(0, 1)] = (1.0, 1.0, 1.0)
    object_size: Annotated[tuple[float, float], Range(0, 1e3, above=True), Ordered()] = (0.42, 0.52)  # radius range


def cameras_at(azimuth: Tensor, elevation: Tensor, radius: Tensor, fov_x_deg: float, size: int,
               target: Tensor | None = None) -> Cameras:
    """Cameras [N] at (azimuth, elevation) radians and `radius` around `target` (default origin)."""
    target = torch.zeros(3) if target is None else target
    eyes = spherical_to_cartesian(azimuth, elevation, radius) + target
    return Cameras.from_fov(look_at(eyes, target), math.radians(fov_x_deg), size, size)


def sample_view_angles(n: int, views: ObjectViews, generator: torch.Generator | None = None):
    """(azimuth, elevation, radius) [N] each: azimuth uniform, elevation uniform in area on the band."""
    u = torch.rand(n, 3, generator=generator)
    lo, hi = (math.sin(math.radians(e)) for e in views.elevation_deg)
    return (u[:, 0] * 2 * math.pi, torch.asin(lo + (hi - lo) * u[:, 1]),
            views.radius[0] + (views.radius[1] - views.radius[0]) * u[:, 2])


@dataclass
class ObjectImages:
    images: Float[Tensor, "N 3 H W"]  # in [0, 1]
    labels: Int[Tensor, " N"]  # index into `classes`
    classes: tuple[str, ...]


def render_objects(n_objects_per_class: int, views_per_object: int, resolution: int, seed: int = 0,
                   classes: tuple[str, ...] = OBJECT_TYPES, views: ObjectViews | None = None) -> ObjectImages:
    """n_objects_per_class * views_per_object images of every class, classes interleaved."""
    views = views or ObjectViews()
    config = WorldConfig(n_objects=(1, 1), placement_extent=0.0, object_size=views.object_size,
                         ground_half_size=0.0)
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for i in range(n_objects_per_class):
        for c, name in enumerate(classes):
            world = make_world(seed * 1_000_003 + i * len(classes) + c, config, object_types=[name])
            az, el, r = sample_view_angles(views_per_object, views, g)
            cams = cameras_at(az, el, r, views.fov_x_deg, resolution, target=world.center[0])
            rgb = render_world(world, cams, background=views.background)["rgb"]
            images.append(rearrange(rgb, "n h w c -> n c h w"))
            labels.append(torch.full((views_per_object,), c, dtype=torch.long))
    return ObjectImages(torch.cat(images), torch.cat(labels), tuple(classes))
