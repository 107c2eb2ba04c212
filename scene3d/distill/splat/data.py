"""Multi-view worlds for splat-and-distill and the (context views, target view) tuple sampler.

The baseline of a tuple is the angle between the optical axes of a context camera and the target
camera; the sampler draws context views whose baseline to the target lies in a chosen range.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.data.dataset import MultiViewDataset, ViewSampling, make_multiview_dataset
from scene3d.data.synthetic import make_world


def make_world_views(seeds: list[int] | range, n_views: int = 24, size: int = 64,
                     sampling: ViewSampling | None = None) -> list[MultiViewDataset]:
    """One posed dataset per world seed: `n_views` random views on the default shell band, with exact
    depth (camera z), normals, semantic and instance labels."""
    return [make_multiview_dataset(make_world(int(s)), n_train=n_views, n_val=0, n_test=0, width=size,
                                   height=size, seed=int(s), sampling=sampling)["train"] for s in seeds]


def view_angles(cameras: Cameras) -> Float[Tensor, "N N"]:
    """Angle in degrees between the optical axes of every pair of cameras."""
    f = cameras.forward
    return torch.rad2deg(torch.acos((f @ f.T).clamp(-1.0, 1.0)))


def sample_tuple(cameras: Cameras, n_context: int, baseline_deg: tuple[float, float],
                 generator: torch.Generator) -> tuple[Int[Tensor, " K"], int]:
    """(context view indices [K], target index): the target is uniform; the context views are drawn
    without replacement among views whose baseline to it lies in `baseline_deg`, topped up with the
    nearest other views when too few qualify."""
    n = len(cameras)
    if n < n_context + 1:
        raise ValueError(f"a tuple needs {n_context + 1} views, the dataset has {n}")
    target = int(torch.randint(n, (), generator=generator))
    angle = view_angles(cameras)[target]
    lo, hi = baseline_deg
    ok = (angle >= lo) & (angle <= hi)
    ok[target] = False
    pool = torch.nonzero(ok).squeeze(1)
    if len(pool) < n_context:
        angle = angle.clone()
        angle[target] = math.inf
        pool = angle.argsort()[:n_context]
    context = pool[torch.randperm(len(pool), generator=generator)[:n_context]]
    return context, target
