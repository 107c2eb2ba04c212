"""What one viewer shows: `ViewerContent`, built by `viewer.inputs` (and by the adapters in
`viewer.adapters`) and drawn by `viewer.server`. This module imports neither, so adapters depend on
it and never on the opener."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scene3d.cameras import Cameras
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
    # Adapter-specific panels, each built as factory(viser_server) -> object with close().
    extra_panels: list[Callable[[Any], Any]] = field(default_factory=list)


def scene_scale(content: ViewerContent) -> float:
    """A length for sizing frustums: the dataset's mean camera distance to its centre, else 1."""
    if content.dataset is None:
        return 1.0
    centers = content.dataset.cameras.centers
    spread = float((centers - centers.mean(0)).norm(dim=-1).mean())
    return spread if math.isfinite(spread) and spread > 0 else 1.0
