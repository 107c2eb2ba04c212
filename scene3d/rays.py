"""Ray bundles, ray/box intersection and stratified samplers.

Directions are unit vectors, so a sample's `t` is its distance from the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass
class Rays:
    """A bundle of rays with any leading shape: origins, dirs [...,3]; near, far [...]."""

    origins: Float[Tensor, "*B 3"]
    dirs: Float[Tensor, "*B 3"]
    near: Float[Tensor, "*B"]
    far: Float[Tensor, "*B"]

    @property
    def shape(self) -> torch.Size:
        return self.origins.shape[:-1]

    def __len__(self) -> int:
        return self.origins.shape[0]

    def __getitem__(self, index) -> Rays:
        return Rays(self.origins[index], self.dirs[index], self.near[index], self.far[index])

    def reshape(self, *shape: int) -> Rays:
        return Rays(self.origins.reshape(*shape, 3), self.dirs.reshape(*shape, 3),
                    self.near.reshape(*shape), self.far.reshape(*shape))

    def flatten(self) -> Rays:
        """All rays as one batch [R]."""
        return self.reshape(-1)

    def to(self, *args, **kwargs) -> Rays:
        return Rays(self.origins.to(*args, **kwargs), self.dirs.to(*args, **kwargs),
                    self.near.to(*args, **kwargs), self.far.to(*args, **kwargs))

    def at(self, t: Float[Tensor, "*B S"]) -> Float[Tensor, "*B S 3"]:
        """Points at distances t along each ray."""
        return self.origins[..., None, :] + t[..., None] * self.dirs[..., None, :]

    def clip_to_aabb(self, aabb: Float[Tensor, "2 3"]) -> tuple[Rays, Tensor]:
        """Rays with [near, far] narrowed to the box, and the mask of rays that hit it."""
        t_in, t_out, hit = intersect_aabb(self.origins, self.dirs, aabb)
        near = torch.maximum(self.near, t_in)
        far = torch.minimum(self.far, t_out)
        hit = hit & (far > near)
        return Rays(self.origins, self.dirs, torch.where(hit, near, self.near),
                    torch.where(hit, far, self.near)), hit


def intersect_aabb(origins: Float[Tensor, "*B 3"], dirs: Float[Tensor, "*B 3"], aabb: Float[Tensor, "2 3"]
                   ) -> tuple[Float[Tensor, "*B"], Float[Tensor, "*B"], Tensor]:
    """Slab test. Returns (t_in >= 0, t_out, hit). Axis-parallel rays are handled exactly."""
    aabb = aabb.to(origins)
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    inv = 1.0 / safe
    t0 = (aabb[0] - origins) * inv
    t1 = (aabb[1] - origins) * inv
    t_in = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    t_out = torch.maximum(t0, t1).amin(dim=-1)
    return t_in, t_out, t_out > t_in


@dataclass
class RaySamples:
    """Samples along rays: distances t [R,S] (bin centres or jittered) and bin lengths deltas [R,S]."""

    t: Float[Tensor, "R S"]
    deltas: Float[Tensor, "R S"]


def stratified_samples(near: Float[Tensor, " R"], far: Float[Tensor, " R"], n_samples: int,
                       perturb: bool = True, generator: torch.Generator | None = None) -> RaySamples:
    """n_samples per ray in equal bins of [near, far], one uniformly jittered sample per bin when
    `perturb` (bin midpoints otherwise). deltas are the bin lengths, which sum to far - near."""
    u = torch.linspace(0.0, 1.0, n_samples + 1, device=near.device, dtype=near.dtype)
    edges = near[:, None] + (far - near)[:, None] * u[None, :]
    lo, hi = edges[:, :-1], edges[:, 1:]
    if perturb:
        jitter = torch.rand(lo.shape, generator=generator, device=near.device, dtype=near.dtype)
    else:
        jitter = torch.full_like(lo, 0.5)
    return RaySamples(t=lo + (hi - lo) * jitter, deltas=hi - lo)
