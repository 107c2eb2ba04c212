"""Viewpoints, glimpse extraction, the pretraining samplers and the viewing policies.

A viewpoint is a centre (y, x) in [-1, 1]^2 and a scale s in (0, 1], the half-side of the square it
covers, [c - s, c + s] (see `avfm.coords`). A glimpse is that square resampled to `size` x `size`
pixels with bilinear `grid_sample` (align_corners=False, so pixel centres sit at the cell centres of
`avfm.coords`; zeros outside the scene, as the reference implementation), always in fp32.

Policies (CanViT, App. D.1): R-IID, F-IID, coarse-to-fine (C2F), fine-to-coarse (F2C),
entropy-guided C2F (EG-C2F), repeated full scene (RFS) and an explicit list. A policy starts a
`PolicyRun` per batch; `run.next(uncertainty)` returns the next `Viewpoint`, where `uncertainty`
[B, h, w] (e.g. a probe's per-position entropy on the canvas) is used by EG-C2F and ignored by the rest.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from avfm.coords import flat_grid, glimpse_coords

# ImageNet channel statistics: the input normalisation of DINO teachers and of the published CanViTs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Viewpoint:
    """A batch of viewpoints: `center` [B, 2] as (y, x), `scale` [B] (half-side), both fp32."""

    center: Float[Tensor, "B 2"]
    scale: Float[Tensor, " B"]

    def __post_init__(self):
        self.center = self.center.float()
        self.scale = self.scale.float()
        if self.center.ndim != 2 or self.center.shape[-1] != 2 or self.scale.shape != self.center.shape[:1]:
            raise ValueError(
                f"Viewpoint: center must be [B, 2] and scale [B], got "
                f"{tuple(self.center.shape)} and {tuple(self.scale.shape)}"
            )

    @classmethod
    def full(cls, batch_size: int, device=None) -> Viewpoint:
        """The whole scene: centre (0, 0), scale 1."""
        return cls(torch.zeros(batch_size, 2, device=device), torch.ones(batch_size, device=device))

    @classmethod
    def make(cls, y: float, x: float, s: float, batch_size: int = 1, device=None) -> Viewpoint:
        """One (y, x, s) viewpoint repeated over a batch."""
        center = torch.tensor([[y, x]], device=device, dtype=torch.float32).expand(batch_size, 2)
        return cls(center.clone(), torch.full((batch_size,), float(s), device=device))

    @classmethod
    def cat(cls, viewpoints: list[Viewpoint]) -> Viewpoint:
        """The batches one after another."""
        return cls(torch.cat([v.center for v in viewpoints]), torch.cat([v.scale for v in viewpoints]))

    @property
    def batch_size(self) -> int:
        return self.center.shape[0]

    def to(self, device) -> Viewpoint:
        return Viewpoint(self.center.to(device), self.scale.to(device))

    def __getitem__(self, index) -> Viewpoint:
        return Viewpoint(self.center[index], self.scale[index])


def extract_glimpse(
    scene: Float[Tensor, "B C H W"], viewpoint: Viewpoint, size: int
) -> Float[Tensor, "B C size size"]:
    """Bilinear crop of `scene` at `viewpoint`, resampled to size x size, computed in fp32.

    Sample points are `center + scale * grid(size)`; outside the scene the image is zero (as the
    reference implementation's `sample_at_viewpoint`), so a glimpse past the border fades to black there.
    """
    coords = glimpse_coords(viewpoint.center.to(scene.device), viewpoint.scale.to(scene.device), size)
    grid = coords.flip(-1)  # grid_sample wants (x, y)
    return F.grid_sample(scene.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ------------------------------------------------------------------------------------------------
# Pretraining samplers (CanViT §5.2)


def sample_viewpoints(
    batch_size: int, generator: torch.Generator | None = None, s_min: float = 0.05, device=None
) -> Viewpoint:
    """Random viewpoints: u ~ U(0, 1), L = sqrt(u) * (1 - s_min), s = 1 - L, centre ~ U([-L, L]^2).

    So every glimpse lies inside the scene and p(s) is proportional to (1 - s) on [s_min, 1].
    """
    u = torch.rand(batch_size, generator=generator)
    half = u.sqrt() * (1.0 - s_min)
    center = (torch.rand(batch_size, 2, generator=generator) * 2 - 1) * half[:, None]
    return Viewpoint(center.to(device), (1.0 - half).to(device))


def sample_rollout_length(
    generator: torch.Generator | None = None, chunk: int = 2, p_stop: float = 0.5
) -> int:
    """Rollout length: `chunk`, plus another `chunk` while a coin lands heads (P = 1 - p_stop).

    The mean is chunk / p_stop (4 glimpses for the paper's K = 2, p_stop = 0.5)."""
    length = chunk
    while torch.rand((), generator=generator).item() >= p_stop:
        length += chunk
    return length


# ------------------------------------------------------------------------------------------------
# Policies


class PolicyRun(ABC):
    """One batch's rollout under a policy."""

    @abstractmethod
    def next(self, uncertainty: Tensor | None = None) -> Viewpoint: ...


class _ListRun(PolicyRun):
    def __init__(self, viewpoints: list[Viewpoint]):
        self.viewpoints, self.t = viewpoints, 0

    def next(self, uncertainty: Tensor | None = None) -> Viewpoint:
        if self.t >= len(self.viewpoints):
            raise IndexError(f"policy ran out of viewpoints after {len(self.viewpoints)} steps")
        self.t += 1
        return self.viewpoints[self.t - 1]


class Policy(ABC):
    """A viewing policy; `start` returns a run that yields `num_steps` viewpoints."""

    @abstractmethod
    def start(
        self, batch_size: int, num_steps: int, generator: torch.Generator | None = None, device=None
    ) -> PolicyRun: ...

    def viewpoints(self, batch_size: int, num_steps: int, generator=None, device=None) -> list[Viewpoint]:
        """All viewpoints of a rollout that needs no feedback."""
        run = self.start(batch_size, num_steps, generator, device)
        return [run.next() for _ in range(num_steps)]


class RandomIID(Policy):
    """R-IID: random viewpoints (`sample_viewpoints`) at every step, including the first."""

    def __init__(self, s_min: float = 0.05):
        self.s_min = s_min

    def start(self, batch_size, num_steps, generator=None, device=None):
        return _ListRun(
            [sample_viewpoints(batch_size, generator, self.s_min, device) for _ in range(num_steps)]
        )


class FullFirstIID(RandomIID):
    """F-IID: the full scene first, then random viewpoints."""

    def start(self, batch_size, num_steps, generator=None, device=None):
        rest = [sample_viewpoints(batch_size, generator, self.s_min, device) for _ in range(num_steps - 1)]
        return _ListRun([Viewpoint.full(batch_size, device), *rest])


class RepeatedFull(Policy):
    """RFS: the full-scene viewpoint at every step (a recurrence-only control)."""

    def start(self, batch_size, num_steps, generator=None, device=None):
        return _ListRun([Viewpoint.full(batch_size, device) for _ in range(num_steps)])


def quadtree_level(level: int, device=None) -> tuple[Float[Tensor, "N 2"], float]:
    """Tile centres (row-major) and scale of quadtree level `level`: 2^l x 2^l tiles of scale 2^-l."""
    n = 2**level
    return flat_grid(n, n, device), 1.0 / n


def _levels_for(num_steps: int) -> int:
    """Number of quadtree levels needed to cover `num_steps` glimpses (1 + 4 + 16 + ...)."""
    levels, total = 0, 0
    while total < num_steps:
        total += 4**levels
        levels += 1
    return levels


def quadtree_walk(levels: list[int], batch_size: int, num_steps: int, generator=None, device=None
                  ) -> list[Viewpoint]:
    """The tiles of the quadtree `levels` in that order, each level's in an independent random order per
    scene, cut at `num_steps`."""
    out: list[Viewpoint] = []
    for level in levels:
        centers, scale = quadtree_level(level, device)
        order = torch.argsort(torch.rand(batch_size, len(centers), generator=generator), dim=1).to(device)
        for k in range(len(centers)):
            out.append(Viewpoint(centers[order[:, k]], torch.full((batch_size,), scale, device=device)))
    return out[:num_steps]


def coarse_to_fine(batch_size: int, num_steps: int, generator=None, device=None) -> list[Viewpoint]:
    """C2F: quadtree levels 0, 1, 2, ... (as many as `num_steps` needs)."""
    return quadtree_walk(list(range(_levels_for(num_steps))), batch_size, num_steps, generator, device)


def fine_to_coarse(batch_size: int, num_steps: int, generator=None, device=None) -> list[Viewpoint]:
    """F2C as the reference defines it: the same levels as C2F, finest first, cut at `num_steps` (so 10 steps
    are 10 of the 16 level-2 tiles, where C2F reversed would give 5 of them, the 4 quadrants and the scene)."""
    return quadtree_walk(list(range(_levels_for(num_steps)))[::-1], batch_size, num_steps, generator, device)


class CoarseToFine(Policy):
    """C2F (see `coarse_to_fine`)."""

    def start(self, batch_size, num_steps, generator=None, device=None):
        return _ListRun(coarse_to_fine(batch_size, num_steps, generator, device))


class FineToCoarse(Policy):
    """F2C (see `fine_to_coarse`)."""

    def start(self, batch_size, num_steps, generator=None, device=None):
        return _ListRun(fine_to_coarse(batch_size, num_steps, generator, device))


class _EntropyRun(PolicyRun):
    def __init__(self, batch_size, num_steps, generator, device):
        self.batch_size, self.generator, self.device = batch_size, generator, device
        self.level, self.visited = 0, None
        self.t, self.num_steps = 0, num_steps

    def next(self, uncertainty: Tensor | None = None) -> Viewpoint:
        if self.t >= self.num_steps:
            raise IndexError(f"policy ran out of viewpoints after {self.num_steps} steps")
        centers, scale = quadtree_level(self.level, self.device)
        if self.visited is None:
            self.visited = torch.zeros(self.batch_size, len(centers), dtype=torch.bool, device=self.device)
        n = 2**self.level
        if uncertainty is None:
            score = torch.rand(self.batch_size, n * n, generator=self.generator).to(self.device)
        else:
            pooled = F.adaptive_avg_pool2d(uncertainty.float()[:, None].to(self.device), n)
            score = rearrange(pooled, "b 1 h w -> b (h w)")
        pick = score.masked_fill(self.visited, -math.inf).argmax(dim=1)
        self.visited[torch.arange(self.batch_size, device=self.device), pick] = True
        if bool(self.visited.all()):
            self.level, self.visited = self.level + 1, None
        self.t += 1
        return Viewpoint(centers[pick], torch.full((self.batch_size,), scale, device=self.device))


class EntropyGuidedC2F(Policy):
    """EG-C2F: C2F, but within a level the unvisited tile with the highest mean uncertainty comes next."""

    def start(self, batch_size, num_steps, generator=None, device=None):
        return _EntropyRun(batch_size, num_steps, generator, device)


class ExplicitList(Policy):
    """A fixed list of (y, x, s) viewpoints, the same for every scene of the batch."""

    def __init__(self, viewpoints: list[tuple[float, float, float]]):
        if not viewpoints:
            raise ValueError("ExplicitList: needs at least one (y, x, s) viewpoint")
        self.triples = [tuple(float(v) for v in t) for t in viewpoints]

    def start(self, batch_size, num_steps, generator=None, device=None):
        if num_steps > len(self.triples):
            raise ValueError(f"ExplicitList: {num_steps} steps asked, {len(self.triples)} viewpoints given")
        return _ListRun(
            [Viewpoint.make(*t, batch_size=batch_size, device=device) for t in self.triples[:num_steps]]
        )


POLICIES: dict[str, type[Policy]] = {
    "random": RandomIID,
    "full_first": FullFirstIID,
    "c2f": CoarseToFine,
    "f2c": FineToCoarse,
    "eg_c2f": EntropyGuidedC2F,
    "repeated_full": RepeatedFull,
    "explicit": ExplicitList,
}


def build_policy(name: str, **kwargs) -> Policy:
    if name not in POLICIES:
        raise KeyError(f"unknown policy '{name}'; known: {sorted(POLICIES)}")
    return POLICIES[name](**kwargs)


__all__ = [
    "POLICIES",
    "Policy",
    "PolicyRun",
    "Viewpoint",
    "build_policy",
    "coarse_to_fine",
    "fine_to_coarse",
    "extract_glimpse",
    "quadtree_level",
    "quadtree_walk",
    "sample_rollout_length",
    "sample_viewpoints",
]
