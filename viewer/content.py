"""What one viewer shows: `ViewerContent`, built by `viewer.inputs` (and by the adapters in
`viewer.adapters`) and drawn by `viewer.server`. This module imports neither, so adapters depend on
it and never on the opener."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scene3d.cameras import Cameras, look_at
from scene3d.data.dataset import MultiViewDataset
from viewer.sources import SceneSource


@dataclass
class ViewerContent:
    """Everything one viewer shows. Any part may be missing; `home` is the first camera pose."""

    title: str
    source: SceneSource | None = None
    dataset: MultiViewDataset | None = None
    run_dir: Path | None = None
    home: Cameras | None = None
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)  # what the home camera orbits around
    # Adapter-specific panels, each built as factory(viser_server, root) -> object with close(); scene nodes
    # they add go under `root` (a scene-graph path), so that hiding the scene hides them.
    extra_panels: list[Callable[[Any, str], Any]] = field(default_factory=list)
    note: str | None = None  # said in the panel, e.g. why a run shows nothing yet

    @property
    def viewable(self) -> bool:
        """Whether anything is drawn: a rendered source, cameras, curves or an adapter's panel."""
        return any(x is not None for x in (self.source, self.dataset, self.run_dir)) or bool(self.extra_panels)


def home_outside_box(lo: Tensor, hi: Tensor) -> tuple[Cameras, tuple[float, float, float]]:
    """A 55-degree camera outside the box [lo, hi] (1.2 diagonals away), looking at its centre; and the centre."""
    center = (lo + hi) / 2
    eye = center + torch.tensor([1.0, -1.0, 0.8]) * 1.2 * float((hi - lo).norm().clamp_min(1e-6))
    return Cameras.from_fov(look_at(eye[None], center), math.radians(55.0), 640, 480), tuple(center.tolist())


def scene_scale(content: ViewerContent) -> float:
    """A length for sizing frustums: the dataset's mean camera distance to its centre, else 1."""
    if content.dataset is None:
        return 1.0
    centers = content.dataset.cameras.centers
    spread = float((centers - centers.mean(0)).norm(dim=-1).mean())
    return spread if math.isfinite(spread) and spread > 0 else 1.0
