"""A dataset's cameras as frustums textured with their images; clicking one moves the browser
camera onto it (keeping the world's up axis, so orbiting stays level) and shows the full image in the GUI."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from scene3d.data.dataset import MultiViewDataset
from viewer.camera import ViewState, cameras_to_view, quat_to_matrix


def thumbnail(image: torch.Tensor, max_side: int) -> np.ndarray:
    """[H,W,3] float in [0,1] -> uint8 with the longer side at most `max_side` (area resampling)."""
    h, w = image.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    if factor < 1.0:
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        image = rearrange(F.interpolate(rearrange(image, "h w c -> 1 c h w"), size=size, mode="area"),
                          "1 c h w -> h w c")
    return (image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def evenly_spaced(n: int, limit: int) -> list[int]:
    """At most `limit` indices spread over range(n)."""
    if n <= limit:
        return list(range(n))
    return sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})


def jump_target(view: ViewState, look_distance: float, up: np.ndarray) -> dict[str, np.ndarray]:
    """The browser camera settings that reproduce `view`: position, look_at (`look_distance`
    along the optical axis, so orbiting turns about the scene), vertical fov, and the world's `up`
    (orbiting keeps turning about it; a rolled camera is shown unrolled)."""
    rotation = quat_to_matrix(np.asarray(view.wxyz))
    position = np.asarray(view.position)
    return {"position": position, "look_at": position + look_distance * rotation[:, 2],
            "up": np.asarray(up, dtype=np.float64), "fov": view.fov_y}


class CameraFrustums:
    """Frustums under `/cameras/` and a GUI folder "Cameras" with the clicked view's image."""

    def __init__(self, server, dataset: MultiViewDataset, scale: float = 1.0, max_cameras: int = 200,
                 thumb_side: int = 96, root: str = "", up: Callable[[], np.ndarray] = lambda: np.array([0.0, 0, 1])):
        self.server, self.dataset, self.root, self.up = server, dataset, root, up
        self.indices = evenly_spaced(len(dataset), max_cameras)
        center = dataset.aabb.mean(0)
        cams = dataset.cameras
        # Distance from each camera to the scene centre along its axis: where the look-at goes.
        self.look_distances = ((center - cams.centers) * cams.forward).sum(-1).clamp_min(1e-3)
        with server.gui.add_folder("Cameras"):
            server.gui.add_markdown(f"{len(dataset)} views, {len(self.indices)} drawn; click one to jump to it.")
            self.show_frustums = server.gui.add_checkbox("Show frustums", initial_value=True)
            self.caption = server.gui.add_markdown("_no view selected_")
            self.image = server.gui.add_image(thumbnail(dataset.images[self.indices[0]], 256), label="view",
                                              visible=False)
        self.show_frustums.on_update(lambda _: self._set_visible(bool(self.show_frustums.value)))
        self.handles = [self._add(i, 0.05 * scale, thumb_side) for i in self.indices]

    def _add(self, i: int, size: float, thumb_side: int):
        view = cameras_to_view(self.dataset.cameras, i)
        handle = self.server.scene.add_camera_frustum(
            f"{self.root}/cameras/{i:05d}", fov=view.fov_y, aspect=view.aspect, scale=size, wxyz=view.wxyz,
            position=view.position, image=thumbnail(self.dataset.images[i], thumb_side), format="jpeg",
            jpeg_quality=85, color=(40, 90, 200), thickness=2.0, thickness_units="screen")
        handle.on_click(lambda event: self.select(i, event.client))
        return handle

    def select(self, i: int, client=None) -> dict[str, np.ndarray]:
        """Show view `i` in the GUI and, given a client, move its camera there; returns the target."""
        view = cameras_to_view(self.dataset.cameras, i)
        target = jump_target(view, float(self.look_distances[i]), self.up())
        self.caption.content = f"**{self.dataset.names[i]}** (view {i}), fov_y {math.degrees(view.fov_y):.1f} deg"
        self.image.image = thumbnail(self.dataset.images[i], 256)
        self.image.visible = True
        if client is not None:
            with client.atomic():
                client.camera.fov = float(target["fov"])
                client.camera.position = target["position"]
                client.camera.look_at = target["look_at"]
                client.camera.up_direction = target["up"]
        return target

    def _set_visible(self, visible: bool) -> None:
        for handle in self.handles:
            handle.visible = visible

    def close(self) -> None:
        """Nothing runs in the background; the scene nodes go with the server."""
