"""Radiance and feature fields (`scene3d.fields`) in the viewer: volume-rendered from the browser
camera, reloaded when the run writes a newer checkpoint."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import torch

from scene3d.cameras import Cameras
from scene3d.checkpoint import load_checkpoint, restoring
from scene3d.fields.base import Field, field_from_spec, load_field_state
from scene3d.render import OccupancyGrid, OccupancyGridConfig, render_image
from scene3d.runs import newest_loadable
from scene3d.viz import colorize_depth, pca_rgb
from viewer.legends import depth_legend
from viewer.sources import CheckpointFollower, Frame, depth_range


def load_field_checkpoint(path: Path) -> tuple[Field, OccupancyGrid | None, dict]:
    """A field (and its occupancy grid, when the run kept one) from a training checkpoint: a fit's own
    grid, or for a distilled student the teacher's grid it was trained and evaluated with."""
    state, config = load_checkpoint(path)
    with restoring(path, "field"):
        field = field_from_spec(config, path)
        load_field_state(field, state["field"], path)
        field.eval()
        occupancy = None
        fit = config.get("distill") or config.get("fit") or {}  # a distilled student: the distiller's grid
        if "occupancy" in state and isinstance(fit, dict) and isinstance(fit.get("occupancy"), dict):
            known = {f.name for f in dataclasses.fields(OccupancyGridConfig)}
            grid = OccupancyGridConfig(**{k: v for k, v in fit["occupancy"].items() if k in known})
            occupancy = OccupancyGrid(field.aabb, grid)
            occupancy.load_state_dict(state["occupancy"])
    return field, occupancy, config


class FieldSource:
    """Volume rendering of a field: rgb (or PCA of N-d features), depth, accumulation."""

    def __init__(self, field: Field, occupancy: OccupancyGrid | None = None, n_samples: int = 64,
                 background: tuple[float, ...] | None = (1.0, 1.0, 1.0),
                 follower: CheckpointFollower[tuple[Field, OccupancyGrid | None, dict]] | None = None):
        self.field, self.occupancy, self.n_samples = field, occupancy, n_samples
        self.background = background
        self.follower = follower  # a run still training: its newest checkpoint replaces the field
        color = "rgb" if field.config.color_dim == 3 else "features"
        self.buffers = (color, "depth", "accumulation")
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir: Path) -> FieldSource | None:
        """The run's newest field checkpoint that loads (as training resumes it), or None when the run
        holds no field checkpoint."""
        found = newest_loadable(run_dir)
        if found is None:
            return None
        path, (_, config) = found
        if "field" not in config:
            return None
        follower = CheckpointFollower(path, load_field_checkpoint)
        field, occupancy, config = follower.value
        with restoring(path, "fit.n_samples"):
            n_samples = int(config.get("fit", {}).get("n_samples", 64))
            if not 1 <= n_samples <= 4096:
                raise ValueError(f"{n_samples} samples per ray")
        return cls(field, occupancy, n_samples, follower=follower)

    def render(self, cameras: Cameras, buffer: str) -> Frame:
        with self._lock:
            if self.follower is not None:
                self.field, self.occupancy, _ = self.follower.current
            bg = None if self.background is None or self.field.config.color_dim != len(self.background) \
                else torch.tensor(self.background)
            out = render_image(self.field, cameras[0], self.n_samples, background=bg, occupancy=self.occupancy)
        acc, depth, color = out["accumulation"][0], out["depth"][0], out["rgb"][0]
        solid, legend = acc > 0.5, None
        if buffer == "rgb":
            image = color.clamp(0, 1)
        elif buffer == "features":
            image = pca_rgb(color, solid)
        elif buffer == "depth":
            near, far = depth_range(cameras, self.field.aabb)
            image, legend = colorize_depth(depth, solid, near, far), depth_legend(near, far)
        elif buffer == "accumulation":
            image = acc.clamp(0, 1)[..., None].expand(-1, -1, 3)
        else:
            raise ValueError(f"buffer {buffer!r} is not offered by this field source ({self.buffers})")
        raw = {"rgb": color, "features": color, "depth": depth, "accumulation": acc}[buffer]
        return Frame(image.float(), torch.where(solid, depth, torch.zeros_like(depth)), legend, raw)
