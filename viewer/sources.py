"""Renderer adapters: anything the viewer can draw from an arbitrary camera.

A `SceneSource` names the buffers it offers and renders one of them for a batch of one camera as
a displayable `Frame` (RGB picture in [0,1] plus the camera-z depth used to composite the
picture with viser's own 3D objects). `render_view` is the whole render-on-demand step (browser
camera -> our camera -> picture) as plain Python, so it is tested without a browser.

Sources implemented here: `SyntheticSource` (exact `render_world`). Radiance fields, Gaussian
scenes and active-vision checkpoints plug in as further classes with the same two members,
listed in `viewer.inputs.RUN_ADAPTERS` (see docs/viewer.md).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.data.synthetic import CLASS_NAMES, World, render_world
from scene3d.errors import Scene3DError
from scene3d.runs import checkpoint_files
from scene3d.viz import colorize_depth, colorize_labels, colorize_normals
from viewer.camera import ViewState, view_to_cameras
from viewer.legends import Legend, depth_legend, labels_legend, normals_legend

# Every buffer name the viewer knows, in the order the dropdown lists them.
BUFFERS = ("rgb", "depth", "normals", "accumulation", "labels", "features")


@dataclass
class Frame:
    """A rendered view: image [H,W,3] float in [0,1]; depth [H,W] camera z, 0 where nothing is hit; the
    legend of a false-colour buffer; the raw buffer (camera-z depth, world normals, label ids, features,
    accumulation, linear RGB)."""

    image: Float[Tensor, "H W 3"]
    depth: Float[Tensor, "H W"] | None = None
    legend: Legend | None = None  # what the false colours mean (depth, labels, normals)
    raw: Tensor | None = None  # the buffer's values before colouring: [H,W] or [H,W,C] (exports save it)

    def to_uint8(self) -> np.ndarray:
        return (self.image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


@runtime_checkable
class SceneSource(Protocol):
    """Something rendered server-side from the browser camera."""

    buffers: tuple[str, ...]  # a subset of BUFFERS, the first is the default

    def render(self, cameras: Cameras, buffer: str) -> Frame:
        """Render `buffer` for `cameras` (a batch of one) at cameras.width x cameras.height."""
        ...


def render_view(source: SceneSource, view: ViewState, buffer: str, max_side: int) -> Frame:
    """The render-on-demand step: the browser's camera at `max_side` pixels on its longer side."""
    if buffer not in source.buffers:
        raise ValueError(f"buffer {buffer!r} is not offered by this source (it has {source.buffers})")
    width, height = view.image_size(max_side)
    frame = source.render(view_to_cameras(view, width, height), buffer)
    assert frame.image.shape == (height, width, 3), (frame.image.shape, height, width)
    return frame


# following a run that is still training ------------------------------------------------------------
Loaded = TypeVar("Loaded")


class CheckpointFollower(Generic[Loaded]):
    """What `load(path)` made of a run's checkpoint, replaced by the newest one when the run writes
    another (checked at most every `every_s` seconds, when `current` is read; a newer checkpoint that
    does not load is ignored). Thread-safe."""

    def __init__(self, checkpoint: Path, load: Callable[[Path], Loaded], every_s: float = 2.0):
        self.checkpoint, self.load, self.every_s = checkpoint, load, every_s
        self.value = load(checkpoint)
        self.lock = threading.Lock()
        self.checked_at = time.monotonic()

    @property
    def current(self) -> Loaded:
        with self.lock:
            if time.monotonic() - self.checked_at >= self.every_s:
                self.checked_at = time.monotonic()
                found = checkpoint_files(self.checkpoint.parent.parent)
                newest = found[-1][1] if found else None
                if newest is not None and newest != self.checkpoint:
                    with contextlib.suppress(Scene3DError):  # a damaged one: keep showing the last good one
                        self.value, self.checkpoint = self.load(newest), newest
            return self.value


# colouring -------------------------------------------------------------------------------------
def depth_range(cameras: Cameras, aabb: Float[Tensor, "2 3"]) -> tuple[float, float]:
    """Camera-z range of the scene box's corners (near clamped at 1e-3): a colour scale for depth
    that stays fixed while the camera moves, instead of flickering with each frame's min / max."""
    corners = torch.cartesian_prod(*aabb.T.float())  # [8,3]
    _, z = cameras[0].project(corners)
    return max(float(z.min()), 1e-3), max(float(z.max()), 2e-3)


# sources -----------------------------------------------------------------------------------
class SyntheticSource:
    """A procedural world rendered exactly by `render_world`: RGB, depth, normals, hit mask, labels."""

    buffers = ("rgb", "depth", "normals", "accumulation", "labels")

    def __init__(self, world: World, background: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        self.world = world
        self.background = background

    def render(self, cameras: Cameras, buffer: str) -> Frame:
        out = {k: v[0] for k, v in render_world(self.world, cameras[0], self.background).items()}
        depth, legend = out["depth"], None
        raw = {"rgb": out["rgb"], "depth": depth, "normals": out["normals"], "accumulation": out["mask"].float(),
               "labels": out["semantic"]}.get(buffer)
        if buffer == "rgb":
            image = out["rgb"]
        elif buffer == "depth":
            near, far = depth_range(cameras, self.world.aabb)
            image, legend = colorize_depth(depth, out["mask"], near, far), depth_legend(near, far)
        elif buffer == "normals":
            image, legend = colorize_normals(out["normals"]), normals_legend("world")
        elif buffer == "accumulation":
            image = out["mask"].float()[..., None].expand(-1, -1, 3)
        elif buffer == "labels":
            image, legend = colorize_labels(out["semantic"]), labels_legend(CLASS_NAMES)
        else:
            raise ValueError(f"buffer {buffer!r} is not offered by SyntheticSource ({self.buffers})")
        return Frame(image.float(), depth, legend, raw)
