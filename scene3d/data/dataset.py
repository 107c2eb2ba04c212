"""Multi-view datasets in memory, and their generation from synthetic worlds."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Annotated

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from scene3d.cameras import Cameras, orbit_cameras, random_sphere_cameras
from scene3d.config import Ordered, Range
from scene3d.data.frame import SceneTransform
from scene3d.data.synthetic import World, render_world


@dataclass
class MultiViewDataset:
    """Posed images of one scene.

    images [N,H,W,3] float in [0,1]; depths [N,H,W] camera z (0 = unknown); masks [N,H,W] bool
    (foreground / valid); normals [N,H,W,3] world; semantic, instance [N,H,W] long; aabb [2,3]
    scene bounds; background [3] the colour of empty pixels; names one per image; points [P,3] and
    point_colors [P,3] in [0,1]: a sparse reconstruction (COLMAP's points3D) to initialise Gaussians;
    frame: the transform from the capture's original world frame to this one (None: the original frame).
    """

    cameras: Cameras
    images: Float[Tensor, "N H W 3"]
    aabb: Float[Tensor, "2 3"]
    background: Float[Tensor, "3"] = field(default_factory=lambda: torch.ones(3))
    depths: Float[Tensor, "N H W"] | None = None
    masks: Bool[Tensor, "N H W"] | None = None
    normals: Float[Tensor, "N H W 3"] | None = None
    semantic: Int[Tensor, "N H W"] | None = None
    instance: Int[Tensor, "N H W"] | None = None
    names: list[str] = field(default_factory=list)
    points: Float[Tensor, "P 3"] | None = None
    point_colors: Float[Tensor, "P 3"] | None = None
    frame: SceneTransform | None = None

    def __post_init__(self) -> None:
        n, h, w = len(self.cameras), self.cameras.height, self.cameras.width
        if tuple(self.images.shape) != (n, h, w, 3):
            raise ValueError(f"images must be [{n},{h},{w},3] to match the cameras, got {tuple(self.images.shape)}")
        for name in ("depths", "masks", "normals", "semantic", "instance"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape[:3]) != (n, h, w):
                raise ValueError(f"{name} must start with [{n},{h},{w}], got {tuple(value.shape)}")
        if not self.names:
            self.names = [f"{i:04d}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def height(self) -> int:
        return self.cameras.height

    @property
    def width(self) -> int:
        return self.cameras.width

    def subset(self, index: list[int] | slice | Tensor) -> MultiViewDataset:
        """The views at `index`, every buffer sliced alike."""
        idx = torch.arange(len(self))[index]
        per_view = {f.name: getattr(self, f.name)[idx] for f in fields(self)
                    if f.name in ("images", "depths", "masks", "normals", "semantic", "instance")
                    and getattr(self, f.name) is not None}
        return replace(self, cameras=self.cameras[idx], names=[self.names[int(i)] for i in idx], **per_view)


@dataclass
class ViewSampling:
    """Where the cameras of a generated multi-view dataset sit (z-up, looking at the target)."""

    radius: Annotated[tuple[float, float], Range(0, 1e6, above=True), Ordered()] = (3.2, 4.2)
    elevation_deg: Annotated[tuple[float, float], Range(-90, 90), Ordered()] = (15.0, 60.0)
    fov_x_deg: Annotated[float, Range(0, 179, above=True)] = 50.0
    target: Annotated[tuple[float, float, float], Range(-1e6, 1e6)] = (0.0, 0.0, 0.2)


def make_multiview_dataset(world: World, n_train: int = 60, n_val: int = 8, n_test: int = 16,
                           width: int = 64, height: int = 64, seed: int = 0,
                           sampling: ViewSampling | None = None,
                           background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[str, MultiViewDataset]:
    """Train views at random on a spherical shell band; val and test views on orbits inside the same
    band (test: evenly spaced azimuths at mid elevation, val: a second, offset orbit)."""
    s = sampling or ViewSampling()
    g = torch.Generator().manual_seed(seed)
    mid_radius = sum(s.radius) / 2
    mid_el = sum(s.elevation_deg) / 2
    cams = {
        "train": random_sphere_cameras(n_train, s.radius, s.elevation_deg, s.fov_x_deg, width, height, s.target, g),
        "val": orbit_cameras(n_val, mid_radius, s.elevation_deg[0] + 0.25 * (s.elevation_deg[1] - s.elevation_deg[0]),
                             s.fov_x_deg, width, height, s.target, azimuth_offset_deg=180.0 / max(n_val, 1)),
        "test": orbit_cameras(n_test, mid_radius, mid_el, s.fov_x_deg, width, height, s.target,
                              azimuth_offset_deg=90.0 / max(n_test, 1)),
    }
    out = {}
    for split, cameras in cams.items():
        if len(cameras) == 0:
            continue
        r = render_world(world, cameras, background)
        out[split] = MultiViewDataset(cameras=cameras, images=r["rgb"], aabb=world.aabb,
                                      background=torch.tensor(background), depths=r["depth"], masks=r["mask"],
                                      normals=r["normals"], semantic=r["semantic"], instance=r["instance"],
                                      names=[f"{split}_{i:04d}" for i in range(len(cameras))])
    return out

