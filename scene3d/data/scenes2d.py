"""2D scene images with dense labels and a scene-level class, rendered from synthetic worlds.

Each scene has a dominant object type (its scene class): 2 or 3 objects of that type and at most
one object of each other type, so the class is well defined. The image is an exact render from a
random elevated viewpoint; `labels` are the per-pixel semantic classes of `CLASS_NAMES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from scene3d.cameras import Cameras, look_at, spherical_to_cartesian
from scene3d.data.synthetic import CLASS_NAMES, OBJECT_TYPES, WorldConfig, make_world, render_world

SCENE_CLASS_NAMES = OBJECT_TYPES


@dataclass
class SceneImages:
    """images [N,3,H,W] in [0,1]; labels [N,H,W] semantic class; scene_class [N] in SCENE_CLASS_NAMES."""

    images: Float[Tensor, "N 3 H W"]
    labels: Int[Tensor, "N H W"]
    scene_class: Int[Tensor, " N"]
    num_classes: int = len(CLASS_NAMES)
    num_scene_classes: int = len(SCENE_CLASS_NAMES)

    def __len__(self) -> int:
        return len(self.images)


def _scene_camera(g: torch.Generator, resolution: int) -> Cameras:
    u = torch.rand(3, generator=g)
    az = u[0] * 2 * math.pi
    el = torch.deg2rad(30 + 35 * u[1])
    radius = 2.2 + 0.6 * u[2]
    target = torch.tensor([0.0, 0.0, 0.15])
    eye = spherical_to_cartesian(az[None], el[None], radius[None]) + target
    return Cameras.from_fov(look_at(eye, target), math.radians(55.0), resolution, resolution)


def make_scene_images(n: int, resolution: int = 128, seed: int = 0, progress: bool = False) -> SceneImages:
    """n scenes, reproducible from `seed` (scene i depends on seed and i only)."""
    images, labels, classes = [], [], []
    config = WorldConfig(ground_half_size=1.6, placement_extent=1.0)
    for i in tqdm(range(n), desc="scenes", disable=not progress):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        main = int(torch.randint(len(OBJECT_TYPES), (), generator=g))
        others = [t for j, t in enumerate(OBJECT_TYPES) if j != main]
        n_main = 2 + int(torch.randint(2, (), generator=g))
        n_other = int(torch.randint(3, (), generator=g))
        picks = torch.randperm(len(others), generator=g)[:n_other].tolist()
        types = [OBJECT_TYPES[main]] * n_main + [others[j] for j in picks]
        world = make_world(seed=int(torch.randint(2**31 - 1, (), generator=g)), config=config, object_types=types)
        r = render_world(world, _scene_camera(g, resolution))
        images.append(r["rgb"][0].permute(2, 0, 1))
        labels.append(r["semantic"][0])
        classes.append(main)
    return SceneImages(torch.stack(images), torch.stack(labels), torch.tensor(classes))
