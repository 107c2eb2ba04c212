"""The browser camera <-> our `Cameras`.

viser reports each client's camera as `wxyz` and `position` of T_world_camera in the OpenCV camera
convention (+x right, +y down, +z forward; see `viser.CameraHandle` and `ViewerCameraMessage`), a
*vertical* field of view `fov` in radians and the canvas aspect (width / height). Our `Cameras`
use the same axes, so c2w = [R(wxyz) | position] with no axis flip; only the intrinsics change
form (square pixels, principal point at the image centre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from scene3d.cameras import Cameras
from scene3d.rotations import quat_to_rotmat, rotmat_to_quat


def quat_to_matrix(wxyz: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation matrix [3,3] (normalised first), float64."""
    return quat_to_rotmat(torch.as_tensor(np.asarray(wxyz, dtype=np.float64))).numpy()


def matrix_to_quat(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrix [3,3] -> unit quaternion (w, x, y, z) with w >= 0, float64."""
    return rotmat_to_quat(torch.as_tensor(np.asarray(rotation, dtype=np.float64))).numpy()


def _bounded(value: float, low: float, high: float, default: float) -> float:
    value = float(value)
    return min(max(value, low), high) if math.isfinite(value) else default


@dataclass(frozen=True)
class ViewState:
    """One browser camera as viser reports it: OpenCV T_world_camera, vertical fov (radians),
    canvas aspect (width / height). A client sends these, so they are made safe to render here:
    non-finite values replaced, fov in [0.001, 3.1] radians, aspect in [1/16, 16], |position| <= 1e6,
    a zero quaternion the identity, canvas side in [0, 16384]."""

    wxyz: tuple[float, float, float, float]
    position: tuple[float, float, float]
    fov_y: float
    aspect: float
    canvas_side: int = 0  # the longer side of the client's canvas in device pixels (HiDPI included); 0: unknown

    def __post_init__(self) -> None:  # plain, bounded Python floats, whatever came in
        wxyz = tuple(_bounded(v, -1e6, 1e6, 0.0) for v in self.wxyz)
        object.__setattr__(self, "wxyz", wxyz if len(wxyz) == 4 and any(wxyz) else (1.0, 0.0, 0.0, 0.0))
        object.__setattr__(self, "position", tuple(_bounded(v, -1e6, 1e6, 0.0) for v in self.position))
        object.__setattr__(self, "fov_y", _bounded(self.fov_y, 1e-3, 3.1, math.radians(50.0)))
        object.__setattr__(self, "aspect", _bounded(self.aspect, 1 / 16, 16.0, 1.0))
        object.__setattr__(self, "canvas_side", int(_bounded(self.canvas_side, 0, 16384, 0)))

    @classmethod
    def from_handle(cls, camera) -> ViewState:
        """From a `viser.CameraHandle` (read by attribute, so viser is not imported here)."""
        return cls(camera.wxyz, camera.position, camera.fov, camera.aspect,
                   max(camera.image_width, camera.image_height))

    def image_size(self, max_side: int) -> tuple[int, int]:
        """(width, height) with the canvas aspect and the longer side `max_side` pixels (at least 1)."""
        if self.aspect >= 1:
            return max_side, max(1, round(max_side / self.aspect))
        return max(1, round(max_side * self.aspect)), max_side


def view_to_cameras(view: ViewState, width: int, height: int) -> Cameras:
    """A batch of one `Cameras` [1] seeing what the browser shows, rendered at width x height."""
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = torch.from_numpy(quat_to_matrix(np.asarray(view.wxyz)))
    c2w[:3, 3] = torch.tensor(view.position, dtype=torch.float64)
    f = 0.5 * height / math.tan(0.5 * view.fov_y)
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    return Cameras(c2w.float(), K.float(), width, height)


def cameras_to_view(cameras: Cameras, index: int = 0) -> ViewState:
    """The viser pose, vertical fov and aspect of camera `index` (principal point and pixel aspect
    are not representable in viser, so a non-central or non-square camera is approximated)."""
    c2w = cameras.c2w[index].double().cpu().numpy()
    fov_y = float(cameras.fov_y[index])
    return ViewState(tuple(matrix_to_quat(c2w[:3, :3]).tolist()), tuple(c2w[:3, 3].tolist()), fov_y,
                     cameras.width / cameras.height)
