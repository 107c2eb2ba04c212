"""PVD-AL's three levels of active learning and the virtual cameras they act on, as the authors'
code builds them (megvii-research/AAAI2023-PVD, branch PVD-AL, `distill_mutual/utils.py` and the
`composite_rays_train` kernel):

- cameras: `Shell` draws each epoch's virtual cameras on a spherical shell band covering the training
  cameras' radii and elevations. `HardPosePool` (image level): from epoch 4 on, the worst 10% of the
  previous epoch's poses by student-vs-teacher PSNR enter a pool; once the pool holds more than its
  capacity, each epoch a random 10% of it, each pose's orientation jittered by up to pi/20 about
  each axis, replaces a random 10% of the epoch's poses, and those pool slots take the new hard poses;
- rays: `HardRayPool` collects the 10% rays of every batch with the largest L1 discrepancy until it
  is full; from then on each batch gets 10% more rays drawn from it at random, whose slots the
  batch's new hard rays replace;
- points: `top_samples` keeps, on rays whose opacity is at least 0.5, the marched samples in the top
  30% by compositing weight; the point losses use the union of the teacher's and the student's.
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


def axis_rotations(roll: Tensor, pitch: Tensor, yaw: Tensor) -> Float[Tensor, "n 3 3"]:
    """Rz(yaw) Rx(roll) Ry(pitch) for angle vectors [n] (the authors' `gen_hard_poses`)."""
    c, s = torch.cos, torch.sin
    one, zero = torch.ones_like(roll), torch.zeros_like(roll)
    rx = torch.stack([one, zero, zero, zero, c(roll), -s(roll), zero, s(roll), c(roll)], -1).view(-1, 3, 3)
    ry = torch.stack([c(pitch), zero, s(pitch), zero, one, zero, -s(pitch), zero, c(pitch)], -1).view(-1, 3, 3)
    rz = torch.stack([c(yaw), -s(yaw), zero, s(yaw), c(yaw), zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ rx @ ry


def jitter_orientations(c2w: Float[Tensor, "N 4 4"], max_angle: float = math.pi / 20,
                        generator: torch.Generator | None = None) -> Float[Tensor, "N 4 4"]:
    """The cameras at the same positions, each orientation turned by a rotation whose roll, pitch
    and yaw are uniform in [-max_angle, max_angle] (left-multiplied, as the authors do)."""
    angles = (torch.rand(3, len(c2w), generator=generator) * 2 - 1) * max_angle
    out = c2w.clone()
    out[:, :3, :3] = axis_rotations(*angles.to(c2w)) @ c2w[:, :3, :3]
    return out


class HardPosePool:
    """PVD-AL's image level: a pool of the worst poses of past epochs, replayed jittered.

    fraction: share of an epoch's poses taken as hard and replaced by pooled ones (authors: 0.1);
    capacity: the pool is full once it holds more than this many poses (authors: 100, with about
    345 poses per epoch); start_epoch: hard poses are collected from epoch start_epoch + 1 on
    (authors: 3; epochs count from 1); max_angle: the jitter bound per axis (authors: pi / 20)."""

    def __init__(self, fraction: float = 0.1, capacity: int = 100, start_epoch: int = 3,
                 max_angle: float = math.pi / 20):
        self.fraction, self.capacity, self.start_epoch, self.max_angle = fraction, capacity, start_epoch, max_angle
        self.c2w = torch.empty(0, 4, 4)
        self.full = False

    def __len__(self) -> int:
        return len(self.c2w)

    def next_epoch(self, epoch: int, last_c2w: Float[Tensor, "N 4 4"], last_psnr: Float[Tensor, " N"],
                   fresh: Float[Tensor, "M 4 4"], generator: torch.Generator | None = None) -> Float[Tensor, "M 4 4"]:
        """The poses of epoch `epoch`: `fresh`, with a share replaced by jittered pooled poses once the
        pool is full; the last epoch's worst poses (finite PSNR, lowest first) enter the pool."""
        if epoch <= self.start_epoch or len(last_c2w) == 0:
            return fresh
        k = int(self.fraction * len(fresh))
        seen = torch.isfinite(last_psnr)
        order = torch.argsort(last_psnr.masked_fill(~seen, math.inf))[: min(k, int(seen.sum()))]
        hard = last_c2w[order].cpu()
        if not self.full:
            self.c2w = torch.cat([self.c2w, hard])
            self.full = len(self.c2w) > self.capacity
            return fresh
        slots = torch.randperm(len(self.c2w), generator=generator)[: len(hard)]
        replayed = jitter_orientations(self.c2w[slots], self.max_angle, generator)
        self.c2w[slots] = hard
        out = fresh.clone()
        out[torch.randperm(len(fresh), generator=generator)[: len(replayed)]] = replayed
        return out

    def state_dict(self) -> dict[str, Tensor]:
        return {"c2w": self.c2w, "full": torch.tensor(self.full)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.c2w, self.full = state["c2w"].cpu(), bool(state["full"])


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


class HardRayPool:
    """PVD-AL's ray level: the hardest rays of past batches (origins and directions), `capacity` of them."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.origins = torch.empty(0, 3)
        self.dirs = torch.empty(0, 3)
        self.full = False

    def __len__(self) -> int:
        return len(self.origins)

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor | None:
        """Indices of n pooled rays at random once the pool is full (None before)."""
        if not self.full:
            return None
        return torch.randperm(len(self), generator=generator, device=self.origins.device)[:n]

    def update(self, origins: Float[Tensor, "R 3"], dirs: Float[Tensor, "R 3"], l1: Float[Tensor, " R"], n_hard: int,
               drawn: Tensor | None = None) -> None:
        """The batch's n_hard rays of largest L1 error replace the slots `drawn` this step, or join the
        pool while it fills."""
        top = torch.topk(l1.detach(), min(n_hard, len(l1))).indices
        o, d = origins[top].detach(), dirs[top].detach()
        if drawn is not None:
            m = min(len(top), len(drawn))
            self.origins[drawn[:m]], self.dirs[drawn[:m]] = o[:m], d[:m]
            return
        self.origins, self.dirs = torch.cat([self.origins.to(o), o]), torch.cat([self.dirs.to(d), d])
        self.full = len(self) >= self.capacity

    def state_dict(self) -> dict[str, Tensor]:
        return {"origins": self.origins, "dirs": self.dirs, "full": torch.tensor(self.full)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.origins, self.dirs, self.full = state["origins"], state["dirs"], bool(state["full"])


# points -------------------------------------------------------------------------------------------
def top_samples(weights: Float[Tensor, "R S"], opacity: Float[Tensor, " R"], marched: Bool[Tensor, "R S"],
                fraction: float = 0.3, opacity_threshold: float = 0.5) -> Bool[Tensor, "R S"]:
    """One field's point level: on rays with opacity >= threshold, the marched samples whose rank by
    compositing weight is at most fraction x (the ray's marched samples), i.e. floor(fraction n) + 1
    of them; no sample of a more transparent ray (the authors' `composite_rays_train`)."""
    n_samples = weights.shape[-1]
    order = weights.masked_fill(~marched, -1.0).argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(n_samples, device=weights.device).expand_as(order))
    limit = (fraction * marched.sum(-1)).floor()
    return marched & (rank <= limit[:, None]) & (opacity >= opacity_threshold)[:, None]
