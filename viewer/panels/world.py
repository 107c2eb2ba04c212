"""The world's up axis: every browser orbits about it (viser's orbit controls turn about the camera's
up direction, so a capture whose up is not +z would otherwise lie on its side).

Chosen by `--up`: "auto" takes the cameras' mean up vector where the scene has cameras (COLMAP
captures are usually -y up) and +z elsewhere (our synthetic worlds and runs); a GUI dropdown changes
it live for every client.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from scene3d.cameras import Cameras
from scene3d.data.normalize import camera_up

UpChoice = Literal["auto", "+x", "-x", "+y", "-y", "+z", "-z"]
AXES = {"+z": (0.0, 0.0, 1.0), "-z": (0.0, 0.0, -1.0), "+y": (0.0, 1.0, 0.0), "-y": (0.0, -1.0, 0.0),
        "+x": (1.0, 0.0, 0.0), "-x": (-1.0, 0.0, 0.0)}
FROM_CAMERAS = "cameras"


def resolve_up(choice: str, cameras: Cameras | None) -> tuple[str, np.ndarray]:
    """(dropdown label, unit up vector [3]) for `--up choice`: an axis, or for "auto" the cameras' mean up
    (label "cameras") when there are cameras whose up vectors do not cancel out, else +z."""
    if choice != "auto":
        return choice, np.asarray(AXES[choice])
    up = None if cameras is None else camera_up(cameras.c2w)
    if up is None:
        return "+z", np.asarray(AXES["+z"])
    return FROM_CAMERAS, up.numpy()


class WorldPanel:
    """GUI folder "World": the up axis, applied to the scene and to every client's camera."""

    def __init__(self, server, choice: str = "auto", cameras: Cameras | None = None):
        self.server = server
        label, self.up = resolve_up(choice, cameras)
        detected = None if cameras is None else camera_up(cameras.c2w)
        self.detected = None if detected is None else detected.numpy()
        options = ((FROM_CAMERAS,) if self.detected is not None else ()) + tuple(AXES)
        with server.gui.add_folder("World", expand_by_default=False):
            self.dropdown = server.gui.add_dropdown("Up axis", options, initial_value=label,
                                                    hint="Orbiting turns about this axis (auto: the cameras' up)")
        self.dropdown.on_update(lambda _: self.set_up(self.vector(str(self.dropdown.value))))
        server.scene.set_up_direction(tuple(self.up))  # new clients' cameras start with the scene's up

    def vector(self, label: str) -> np.ndarray:
        return self.detected if label == FROM_CAMERAS else np.asarray(AXES[label])

    def set_up(self, up: np.ndarray) -> None:
        self.up = np.asarray(up, dtype=np.float64)
        self.server.scene.set_up_direction(tuple(self.up))
        for client in self.server.get_clients().values():
            client.camera.up_direction = self.up

    def close(self) -> None:
        """Nothing runs in the background."""
