"""PVD-AL's three levels of active learning and the virtual cameras they act on.

- cameras: `Shell` draws the epoch's virtual cameras on a spherical shell band covering the training
  cameras' radii and elevations; `CameraPool` keeps the worst poses of an epoch by student-vs-teacher
  PSNR, which the next epoch revisits with small random rotations about the scene centre;
- rays: `RayPool` keeps the rays of a batch with the largest L1 discrepancy and appends them to the next;
- points: `point_mask` restricts the point-level losses to the samples of highest compositing weight
  on rays that are mostly opaque.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from scene3d.cameras import Cameras, random_sphere_cameras

ACTIVE_LEVELS = ("image", "ray", "point")


def parse_active(active: str | tuple[str, ...] | list[str]) -> frozenset[str]:
    """'image,ray,point' (or a sequence of names) -> the set of active-learning levels."""
    names = active.split(",") if isinstance(active, str) else list(active)
    names = [n.strip() for n in names if n.strip()]
    unknown = sorted(set(names) - set(ACTIVE_LEVELS))
    if unknown:
        raise ValueError(f"unknown active-learning level(s) {unknown}; choose among {ACTIVE_LEVELS}")
    return frozenset(names)


# cameras ------------------------------------------------------------------------------------------
def look_at_target(cameras: Cameras) -> Float[Tensor, "3"]:
    """The point closest (least squares) to every optical axis: what the cameras look at."""
    d = cameras.forward.double()
    projector = torch.eye(3).to(d) - torch.einsum("ni,nj->nij", d, d)              # [N,3,3]
    lhs, rhs = projector.sum(0), torch.einsum("nij,nj->i", projector, cameras.centers.double())
    # The minimum-norm solution through the pseudo-inverse, not `lstsq`: CPU lstsq (LAPACK gelsy) varies
    # in its last bits from call to call, so two runs on one dataset drew different shells.
    return (torch.linalg.pinv(lhs, rtol=1e-6) @ rhs).to(cameras.centers.dtype)


@dataclass
class Shell:
    """A band of a spherical shell around `target` (z up) and the intrinsics of its cameras."""

    radius: tuple[float, float]
    elevation_deg: tuple[float, float]
    target: tuple[float, float, float]
    fov_x_deg: float = 50.0
    width: int = 64
    height: int = 64

    @classmethod
    def from_cameras(cls, cameras: Cameras) -> Shell:
        """The band covering the cameras' distances and elevations around the point they look at."""
        target = look_at_target(cameras)
        offsets = cameras.centers - target
        radius = offsets.norm(dim=-1)
        elevation = torch.rad2deg(torch.asin((offsets[:, 2] / radius).clamp(-1, 1)))
        return cls((radius.min().item(), radius.max().item()), (elevation.min().item(), elevation.max().item()),
                   tuple(target.tolist()), math.degrees(cameras.fov_x[0].item()), cameras.width, cameras.height)

    @classmethod
    def around_box(cls, aabb: Float[Tensor, "2 3"], size: int = 64) -> Shell:
        """A default band when no training cameras are known: 1.6..2.2 half-diagonals away."""
        half = (aabb[1] - aabb[0]).norm().item() / 2
        return cls((1.6 * half, 2.2 * half), (15.0, 60.0), tuple(aabb.mean(0).tolist()), 50.0, size, size)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Cameras:
        """n cameras uniform in area over the band, looking at the target."""
        return random_sphere_cameras(n, self.radius, self.elevation_deg, self.fov_x_deg, self.width, self.height,
                                     self.target, generator)

    def cameras(self, c2w: Float[Tensor, "N 4 4"]) -> Cameras:
        """Cameras of this band's intrinsics at the poses c2w."""
        return Cameras.from_fov(c2w, math.radians(self.fov_x_deg), self.width, self.height)


def random_rotations(n: int, max_deg: float, generator: torch.Generator | None = None) -> Float[Tensor, "n 3 3"]:
    """Rotations about uniformly random axes by angles uniform in [-max_deg, max_deg] (Rodrigues)."""
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_deg)
    k = torch.zeros(n, 3, 3)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    s, c = angle.sin()[:, None, None], angle.cos()[:, None, None]
    return torch.eye(3) + s * k + (1 - c) * (k @ k)


def rotate_about(c2w: Float[Tensor, "N 4 4"], center: Float[Tensor, "3"], rotations: Float[Tensor, "N 3 3"]
                 ) -> Float[Tensor, "N 4 4"]:
    """Rigidly rotate whole cameras (position and orientation) about a world point."""
    out = c2w.clone()
    rotations, center = rotations.to(c2w), center.to(c2w)
    out[:, :3, :3] = rotations @ c2w[:, :3, :3]
    out[:, :3, 3] = torch.einsum("nij,nj->ni", rotations, c2w[:, :3, 3] - center) + center
    return out


class CameraPool:
    """The worst `fraction` of an epoch's poses by PSNR. Poses and their PSNRs are selected with the
    same index, so every pose in the pool keeps its own PSNR."""

    def __init__(self, fraction: float = 0.1):
        self.fraction = fraction
        self.c2w = torch.empty(0, 4, 4)
        self.psnr = torch.empty(0)

    def __len__(self) -> int:
        return len(self.c2w)

    def update(self, c2w: Float[Tensor, "N 4 4"], psnr: Float[Tensor, " N"]) -> None:
        """Keep the ceil(fraction N) poses of lowest finite PSNR (unseen poses have PSNR inf)."""
        k = min(math.ceil(self.fraction * len(c2w)), int(torch.isfinite(psnr).sum()))
        order = torch.argsort(psnr.cpu())[:k]
        self.c2w, self.psnr = c2w.cpu()[order], psnr.cpu()[order]

    def revisit(self, center: Float[Tensor, "3"], max_deg: float, generator: torch.Generator | None = None
                ) -> Float[Tensor, "K 4 4"]:
        """The pooled poses, each rotated by a small random rotation about the scene centre."""
        return rotate_about(self.c2w, center, random_rotations(len(self), max_deg, generator))

    def state_dict(self) -> dict[str, Tensor]:
        return {"c2w": self.c2w, "psnr": self.psnr}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.c2w, self.psnr = state["c2w"].cpu(), state["psnr"].cpu()


class ViewErrors:
    """Squared RGB error summed per camera over an epoch's batches -> per-camera PSNR."""

    def __init__(self, n_views: int, device: torch.device | str = "cpu"):
        self.sum = torch.zeros(n_views, device=device)
        self.count = torch.zeros(n_views, device=device)

    def add(self, view: Tensor, squared_error: Float[Tensor, " R"]) -> None:
        """Accumulate per-ray mean squared errors of rays from cameras `view` (-1: not tallied)."""
        ok = view >= 0
        self.sum.index_add_(0, view[ok], squared_error[ok].detach())
        self.count.index_add_(0, view[ok], torch.ones_like(squared_error[ok]))

    def psnr(self) -> Float[Tensor, " N"]:
        mse = self.sum / self.count.clamp_min(1)
        return torch.where(self.count > 0, -10 * torch.log10(mse.clamp_min(1e-10)), torch.full_like(mse, math.inf))


class RayPool:
    """The `size` rays of the last batch with the largest L1 discrepancy, appended to the next batch."""

    def __init__(self, size: int):
        self.size = size
        self.origins = torch.empty(0, 3)
        self.dirs = torch.empty(0, 3)

    def __len__(self) -> int:
        return len(self.origins)

    def update(self, origins: Float[Tensor, "R 3"], dirs: Float[Tensor, "R 3"], l1: Float[Tensor, " R"]) -> None:
        top = torch.topk(l1.detach(), min(self.size, len(l1))).indices
        self.origins, self.dirs = origins[top].detach(), dirs[top].detach()

    def state_dict(self) -> dict[str, Tensor]:
        return {"origins": self.origins, "dirs": self.dirs}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.origins, self.dirs = state["origins"], state["dirs"]


# points -------------------------------------------------------------------------------------------
def point_mask(weights: Float[Tensor, "R S"], opacity: Float[Tensor, " R"], top_fraction: float = 0.3,
               opacity_threshold: float = 0.5) -> Bool[Tensor, "R S"]:
    """On rays with opacity > threshold keep the ceil(top_fraction S) samples of largest compositing
    weight; keep every sample of the other (mostly empty) rays, where all of them should stay empty."""
    k = max(1, math.ceil(top_fraction * weights.shape[-1]))
    top = torch.zeros_like(weights, dtype=torch.bool).scatter_(-1, weights.topk(k, dim=-1).indices, True)
    return top | (opacity <= opacity_threshold)[:, None]
