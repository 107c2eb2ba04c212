"""Camera paths: keyframes interpolated into the cameras of a video, saved as nerfstudio's camera-path
JSON so that paths move between the tools (`ns-render camera-path --camera-path-filename ...` renders
ours, `scripts/render_path.py` renders theirs).

The file (nerfstudio's viewer writes and `nerfstudio.cameras.camera_paths.get_path_from_json` reads it):
`render_width`, `render_height`, `fps`, `seconds`, `camera_type` ("perspective" only here), `keyframes`
[{`matrix`, `fov`, `aspect`}] and the dense `camera_path` [{`camera_to_world`, `fov`, `aspect`}] that
is rendered, one entry per frame. Matrices are camera-to-world, 16 numbers row-major, with OpenGL
camera axes (x right, y up, z backwards); `fov` is the vertical field of view in degrees. Poses are in
the scene's world frame (nerfstudio's: its normalised data-parser frame).

    path = CameraPath([Keyframe(c2w, fov_y, aspect), ...], width=640, height=480, fps=30, seconds=4)
    save_camera_path("orbit.json", path); cameras = load_camera_path("orbit.json").cameras()   # Cameras [N]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from scene3d.cameras import Cameras, opencv_to_opengl, opengl_to_opencv
from scene3d.checkpoint import atomic_write_json
from scene3d.data.json_doc import JsonDoc
from scene3d.rotations import quat_to_rotmat, rotmat_to_quat, slerp

MAX_SIDE = 8192  # render_width / render_height
MAX_FRAMES = 100_000


@dataclass
class Keyframe:
    """One camera of the path: c2w [4,4] with OpenCV axes (as `Cameras`), vertical fov (radians), aspect w/h."""

    c2w: Float[Tensor, "4 4"]
    fov_y: float
    aspect: float


@dataclass
class CameraPath:
    """Keyframes and how the video samples them; `frames`, when given (a loaded file's dense
    `camera_path`), are the video's cameras exactly, as nerfstudio renders them."""

    keyframes: list[Keyframe]
    width: int = 640
    height: int = 480
    fps: float = 30.0
    seconds: float = 4.0
    is_cycle: bool = False
    frames: list[Keyframe] | None = field(default=None, repr=False)

    @property
    def n_frames(self) -> int:
        return len(self.frames) if self.frames is not None else max(1, round(self.fps * self.seconds))

    def sampled(self) -> list[Keyframe]:
        """The video's cameras as keyframe records: the loaded frames, else the keyframes interpolated."""
        if self.frames is not None:
            return self.frames
        return interpolate(self.keyframes, self.n_frames, self.is_cycle)

    def cameras(self) -> Cameras:
        """The video's cameras [n_frames] at width x height (square pixels, centred principal point)."""
        frames = self.sampled()
        c2w = torch.stack([f.c2w.float() for f in frames])
        focal = torch.tensor([0.5 * self.height / math.tan(0.5 * f.fov_y) for f in frames])
        K = torch.zeros(len(frames), 3, 3)
        K[:, 0, 0] = K[:, 1, 1] = focal
        K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = self.width / 2, self.height / 2, 1.0
        return Cameras(c2w, K, self.width, self.height)


# interpolation -------------------------------------------------------------------------------------
def interpolate(keyframes: list[Keyframe], n: int, is_cycle: bool = False) -> list[Keyframe]:
    """`n` cameras passing through every keyframe at evenly spaced times: positions on a Catmull-Rom
    spline (uniform), orientations by slerp, fov and aspect linear. The first and last frames are the
    first and last keyframes (a cycle returns to the first)."""
    if not keyframes:
        raise ValueError("a camera path needs at least one keyframe")
    c2w = torch.stack([k.c2w.double() for k in keyframes])
    if is_cycle:
        c2w, keyframes = torch.cat([c2w, c2w[:1]]), [*keyframes, keyframes[0]]
    segments = len(keyframes) - 1
    positions, quats = c2w[:, :3, 3], rotmat_to_quat(c2w[:, :3, :3])
    if segments == 0:
        return [Keyframe(keyframes[0].c2w.clone(), keyframes[0].fov_y, keyframes[0].aspect) for _ in range(n)]

    def point(i: int) -> Tensor:  # the spline's control points, extended linearly past the ends
        if is_cycle:
            return positions[i % segments]
        if i < 0:
            return 2 * positions[0] - positions[1]
        if i > segments:
            return 2 * positions[-1] - positions[-2]
        return positions[i]

    out = []
    for s in np.linspace(0.0, segments, n) if n > 1 else [0.0]:
        i = min(int(s), segments - 1)
        t = float(s - i)
        p0, p1, p2, p3 = point(i - 1), point(i), point(i + 1), point(i + 2)
        pose = torch.eye(4, dtype=torch.float64)
        pose[:3, 3] = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                             + (3 * p1 - p0 - 3 * p2 + p3) * t**3)
        pose[:3, :3] = quat_to_rotmat(slerp(quats[i], quats[i + 1], t))
        a, b = keyframes[i], keyframes[i + 1]
        out.append(Keyframe(pose.float(), (1 - t) * a.fov_y + t * b.fov_y, (1 - t) * a.aspect + t * b.aspect))
    return out


# the file ---------------------------------------------------------------------------------------------
def _record(k: Keyframe, matrix_key: str) -> dict:
    gl = opencv_to_opengl(k.c2w.double())
    return {matrix_key: gl.reshape(-1).tolist(), "fov": math.degrees(k.fov_y), "aspect": k.aspect}


def camera_path_json(path: CameraPath) -> dict:
    """The nerfstudio camera-path document of `path` (keyframes and every frame)."""
    keyframes = [{**_record(k, "matrix"), "override_transition_enabled": False, "override_transition_sec": None}
                 for k in path.keyframes]
    return {"camera_type": "perspective", "render_width": path.width, "render_height": path.height,
            "fps": path.fps, "seconds": path.n_frames / path.fps, "is_cycle": path.is_cycle,
            "smoothness_value": 0.0, "default_fov": math.degrees(path.keyframes[0].fov_y) if path.keyframes else 50.0,
            "default_transition_sec": path.seconds / max(len(path.keyframes) - 1, 1),
            "keyframes": keyframes, "camera_path": [_record(k, "camera_to_world") for k in path.sampled()]}


def save_camera_path(file: str | Path, path: CameraPath) -> Path:
    """Write `path` as nerfstudio camera-path JSON (atomically)."""
    return atomic_write_json(Path(file), camera_path_json(path))


def _keyframe(doc: JsonDoc, entry: object, matrix_key: str, where: str) -> Keyframe:
    if not isinstance(entry, dict):
        raise doc.error(where, "must be an object")
    flat = entry.get(matrix_key)
    if isinstance(flat, list) and len(flat) == 16 and not any(isinstance(v, list) for v in flat):
        entry = {**entry, matrix_key: [flat[i:i + 4] for i in range(0, 16, 4)]}
    c2w = opengl_to_opencv(doc.matrix(entry, matrix_key, f"{where}.{matrix_key}"))
    fov = doc.number(entry, "fov", f"{where}.fov", positive=True)
    if fov >= 180:
        raise doc.error(f"{where}.fov", f"must be a vertical field of view in degrees below 180, got {fov}")
    return Keyframe(c2w, math.radians(fov), doc.number(entry, "aspect", f"{where}.aspect", 1.0, positive=True))


def load_camera_path(file: str | Path) -> CameraPath:
    """A nerfstudio camera-path JSON (ours or nerfstudio's viewer's): its dense `camera_path` is the
    video; a file with keyframes only is interpolated over `seconds` at `fps`. Bad fields are one
    `DataError` naming the file and the field."""
    doc = JsonDoc(Path(file))
    data = doc.data
    if data.get("camera_type", "perspective") != "perspective":
        raise doc.error("camera_type", f"only 'perspective' paths are rendered here, got {data['camera_type']!r}")
    size = []
    for key in ("render_width", "render_height"):
        value = doc.number(data, key, key, positive=True)
        if value != int(value) or value > MAX_SIDE:
            raise doc.error(key, f"must be a whole number of pixels up to {MAX_SIDE}, got {value}")
        size.append(int(value))
    fps = doc.number(data, "fps", "fps", 30.0, positive=True)
    seconds = doc.number(data, "seconds", "seconds", 4.0, positive=True)
    keyframes = data.get("keyframes", [])
    dense = data.get("camera_path", [])
    for key, value in (("keyframes", keyframes), ("camera_path", dense)):
        if not isinstance(value, list) or len(value) > MAX_FRAMES:
            raise doc.error(key, f"must be a list of at most {MAX_FRAMES} cameras")
    if not dense and not keyframes:
        raise doc.error("camera_path", "the file has neither frames (camera_path) nor keyframes")
    keys = [_keyframe(doc, k, "matrix", f"keyframes[{i}]") for i, k in enumerate(keyframes)]
    frames = [_keyframe(doc, f, "camera_to_world", f"camera_path[{i}]") for i, f in enumerate(dense)]
    if not dense and round(fps * seconds) > MAX_FRAMES:
        raise doc.error("seconds", f"{seconds} s at {fps} fps is more than {MAX_FRAMES} frames")
    return CameraPath(keys or frames[:1], size[0], size[1], fps, seconds, bool(data.get("is_cycle", False)),
                      frames or None)
