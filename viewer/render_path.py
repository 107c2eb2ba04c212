"""Rendering what the viewer shows to files: a camera path to a video, and one view to PNG pictures
and raw `.npy` buffers. Any `SceneSource` renders (synthetic worlds, fields, Gaussians), with the same
code as the live viewer, so a video frame equals the view the viewer shows from that camera.

    frames = render_cameras(source, load_camera_path("orbit.json").cameras(), "rgb")   # [F,H,W,3]
    write_video("orbit.mp4", frames, fps=30)
    export_view(source, cameras, Path("exports"), "view")   # view_rgb.png, view_depth.npy, ...
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from scene3d.cameras import Cameras
from scene3d.checkpoint import atomic_write
from scene3d.data.camera_path import CameraPath, Keyframe, save_camera_path
from scene3d.viz import save_png
from viewer.sources import SceneSource


def render_cameras(source: SceneSource, cameras: Cameras, buffer: str, progress: bool = True
                   ) -> Float[Tensor, "F H W 3"]:
    """The displayed picture of `buffer` from each camera (as the viewer shows it), [F,H,W,3] in [0,1]."""
    if buffer not in source.buffers:
        raise ValueError(f"buffer {buffer!r} is not offered by this source (it has {', '.join(source.buffers)})")
    frames = [source.render(cameras[i:i + 1], buffer).image.clamp(0, 1)
              for i in tqdm(range(len(cameras)), desc=f"rendering {buffer}", disable=not progress, unit="frame")]
    return torch.stack(frames)


def export_view(source: SceneSource, cameras: Cameras, folder: Path, stem: str) -> list[Path]:
    """Every buffer of `source` from `cameras` (a batch of one): `{stem}_{buffer}.png` as displayed,
    `{stem}_{buffer}.npy` raw (camera-z depth, world normals, label ids, features, ...), and the camera
    as a one-frame camera path `{stem}_camera.json` (so `scripts/render_path.py` renders it again)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for buffer in (b for b in source.buffers if b not in getattr(source, "browser_buffers", ())):
        frame = source.render(cameras, buffer)
        written.append(save_png(folder / f"{stem}_{buffer}.png", frame.image))
        if frame.raw is not None:
            raw = frame.raw.detach().cpu().numpy()
            written.append(atomic_write(folder / f"{stem}_{buffer}.npy", lambda f, raw=raw: np.save(f, raw)))
    camera = cameras[0]
    keyframe = Keyframe(camera.c2w[0].float(), float(camera.fov_y[0]), camera.width / camera.height)
    path = CameraPath([keyframe], camera.width, camera.height, fps=1.0, seconds=1.0)
    written.append(save_camera_path(folder / f"{stem}_camera.json", path))
    return written
