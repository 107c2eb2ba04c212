"""GUI folder "Camera path": keyframes from a browser's current view or from a dataset camera, drawn as
orange frustums joined by the interpolated path; a preview slider that moves the browser camera along
it; save / load as nerfstudio camera-path JSON; render to MP4 with the scene's own renderer; and
"Export view" (every buffer of the current view as PNG and raw .npy, plus its camera).

Files are written to and read from one folder (`ViewerConfig.export_dir`); a client names only a plain
file name in it, never a path.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from scene3d.cameras import Cameras
from scene3d.data.camera_path import CameraPath, Keyframe, interpolate, load_camera_path, save_camera_path
from scene3d.errors import Scene3DError
from scene3d.viz import write_video
from viewer.camera import ViewState, cameras_to_view, view_to_cameras
from viewer.panels.scene import MAX_SIDE
from viewer.render_path import export_view, render_cameras
from viewer.sources import SceneSource

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_VIDEO_FRAMES = 3600
PATH_COLOR = (240, 130, 30)


def safe_name(name: str, suffix: str) -> str | None:
    """`name` as a plain file name in the export folder with `suffix`, or None when it is not one."""
    stem = name.strip().removesuffix(suffix)
    return f"{stem}{suffix}" if SAFE_NAME.fullmatch(stem) else None


def keyframe_from_view(view: ViewState) -> Keyframe:
    cameras = view_to_cameras(view, *view.image_size(256))
    return Keyframe(cameras.c2w[0], view.fov_y, view.aspect)


class CameraPathPanel:
    """`source()`: the scene rendered now (None: nothing renders server-side); `dataset_cameras()`: the
    current scene's dataset cameras (None: none); files go to `folder`."""

    def __init__(self, server, source: Callable[[], SceneSource | None],
                 dataset_cameras: Callable[[], Cameras | None], folder: Path, buffer: Callable[[], str],
                 scale: float = 1.0):
        self.server, self.source, self.dataset_cameras, self.folder = server, source, dataset_cameras, Path(folder)
        self.buffer, self.scale = buffer, scale
        self.keyframes: list[Keyframe] = []
        self._nodes: list = []
        self._render_lock = threading.Lock()
        self.last_written: list[Path] = []
        gui = server.gui
        with gui.add_folder("Camera path", expand_by_default=False):
            self.status = gui.add_markdown("_no keyframes: add the current view or a dataset camera_")
            self.add_view = gui.add_button("Add current view")
            self.camera_index = gui.add_number("Dataset camera", 0, min=0, max=100_000, step=1)
            self.add_camera = gui.add_button("Add dataset camera")
            self.remove_last = gui.add_button("Remove last keyframe")
            self.clear = gui.add_button("Clear keyframes")
            self.preview = gui.add_slider("Preview", min=0.0, max=1.0, step=0.005, initial_value=0.0)
            self.seconds = gui.add_number("Seconds", 4.0, min=0.1, max=600.0, step=0.1)
            self.fps = gui.add_number("FPS", 24, min=1, max=120, step=1)
            self.width = gui.add_number("Video width", 640, min=16, max=MAX_SIDE, step=2)
            self.height = gui.add_number("Video height", 480, min=16, max=MAX_SIDE, step=2)
            self.name = gui.add_text("File name", "camera_path")
            self.save = gui.add_button("Save path (.json)")
            self.load = gui.add_button("Load path (.json)")
            self.render = gui.add_button("Render video (.mp4)")
            self.export = gui.add_button("Export view (.png, .npy)")
        self.add_view.on_click(lambda event: self.add(keyframe_from_view(ViewState.from_handle(event.client.camera))))
        self.add_camera.on_click(lambda _: self.add_dataset_camera(int(self.camera_index.value)))
        self.remove_last.on_click(lambda _: self._set(self.keyframes[:-1]))
        self.clear.on_click(lambda _: self._set([]))
        self.preview.on_update(lambda event: self.show_preview(float(self.preview.value), event.client))
        self.save.on_click(lambda _: self._report(self.save_path))
        self.load.on_click(lambda _: self._report(self.load_path))
        self.render.on_click(lambda _: threading.Thread(target=self._report, args=(self.render_video,),
                                                        name="viewer-render-video", daemon=True).start())
        self.export.on_click(lambda event: self._report(lambda: self.export_view(ViewState.from_handle(
            event.client.camera))))

    # keyframes -------------------------------------------------------------------------------------
    def add(self, keyframe: Keyframe) -> None:
        self._set([*self.keyframes, keyframe])

    def add_dataset_camera(self, index: int) -> None:
        cameras = self.dataset_cameras()
        if cameras is None or not 0 <= index < len(cameras):
            self.status.content = "_this scene has no dataset camera with that number_"
            return
        self.add(Keyframe(cameras.c2w[index].float(), float(cameras.fov_y[index]), cameras.width / cameras.height))

    def path(self) -> CameraPath:
        return CameraPath(list(self.keyframes), int(self.width.value), int(self.height.value), float(self.fps.value),
                          float(self.seconds.value))

    def _set(self, keyframes: list[Keyframe]) -> None:
        self.keyframes = keyframes
        for node in self._nodes:
            node.remove()
        self._nodes = []
        for i, k in enumerate(keyframes):
            view = cameras_to_view(Cameras(k.c2w[None], torch.eye(3)[None], 2, 2))
            self._nodes.append(self.server.scene.add_camera_frustum(
                f"/camera_path/key{i}", fov=k.fov_y, aspect=k.aspect, scale=0.06 * self.scale, wxyz=view.wxyz,
                position=view.position, color=PATH_COLOR))
        if len(keyframes) > 1:
            points = torch.stack([f.c2w[:3, 3] for f in interpolate(keyframes, 20 * len(keyframes))]).numpy()
            self._nodes.append(self.server.scene.add_line_segments(
                "/camera_path/line", np.stack([points[:-1], points[1:]], 1), colors=PATH_COLOR, thickness=2.0,
                thickness_units="screen"))
        self.status.content = (f"{len(keyframes)} keyframes" if keyframes else
                               "_no keyframes: add the current view or a dataset camera_")

    def show_preview(self, t: float, client=None) -> Keyframe | None:
        """The path's camera at time fraction `t`; given a client, its browser camera moves there."""
        if not self.keyframes:
            return None
        frame = interpolate(self.keyframes, 201)[round(min(max(t, 0.0), 1.0) * 200)]
        if client is not None:
            rotation, position = frame.c2w[:3, :3].double().numpy(), frame.c2w[:3, 3].double().numpy()
            with client.atomic():
                client.camera.fov = frame.fov_y
                client.camera.position = position
                client.camera.look_at = position + rotation[:, 2]
        return frame

    # files ------------------------------------------------------------------------------------------
    def _file(self, suffix: str) -> Path:
        name = safe_name(str(self.name.value), suffix)
        if name is None:
            raise Scene3DError(f"file name {str(self.name.value)[:80]!r}: use letters, digits, '_', '-' and '.' "
                               "only (no folders)")
        return self.folder / name

    def save_path(self) -> str:
        if not self.keyframes:
            return "_add keyframes first_"
        self.folder.mkdir(parents=True, exist_ok=True)
        path = save_camera_path(self._file(".json"), self.path())
        self.last_written = [path]
        return f"saved `{path}`"

    def load_path(self) -> str:
        path = load_camera_path(self._file(".json"))
        self.seconds.value, self.fps.value = path.n_frames / path.fps, path.fps
        self.width.value, self.height.value = min(path.width, MAX_SIDE), min(path.height, MAX_SIDE)
        self._set(path.keyframes)
        return f"loaded {len(path.keyframes)} keyframes from `{self._file('.json')}`"

    def render_video(self) -> str:
        """The path rendered with the current scene's renderer and buffer, as `<name>.mp4`."""
        source, path = self.source(), self.path()
        if source is None or not self.keyframes:
            return "_needs keyframes and a scene rendered on the server_"
        if path.n_frames > MAX_VIDEO_FRAMES:
            return f"_{path.n_frames} frames: at most {MAX_VIDEO_FRAMES} (shorten the path or lower the FPS)_"
        if not self._render_lock.acquire(blocking=False):
            return "_a video is already rendering_"
        try:
            out, start = self._file(".mp4"), time.perf_counter()
            self.folder.mkdir(parents=True, exist_ok=True)
            cameras, frames = path.cameras(), []
            buffer = self.buffer() if self.buffer() in source.buffers else source.buffers[0]
            for i in range(len(cameras)):
                frames.append(render_cameras(source, cameras[i:i + 1], buffer, progress=False)[0])
                self.status.content = f"rendering frame {i + 1} / {len(cameras)}"
            written = write_video(out, torch.stack(frames), path.fps)
            self.last_written = [written]
            return f"wrote `{written}`: {len(frames)} frames in {time.perf_counter() - start:.1f} s"
        finally:
            self._render_lock.release()

    def export_view(self, view: ViewState) -> str:
        source = self.source()
        if source is None:
            return "_nothing is rendered on the server in this scene_"
        width, height = view.image_size(int(self.width.value))
        stem = self._file("").name
        self.last_written = export_view(source, view_to_cameras(view, width, height), self.folder, stem)
        return f"exported {len(self.last_written)} files to `{self.folder}` ({stem}_*)"

    def _report(self, action: Callable[[], str]) -> None:
        try:
            self.status.content = action()
        except Scene3DError as err:
            self.status.content = f"**error**: {err}"

    def close(self) -> None:
        """A video still rendering finishes in its daemon thread; nothing else runs."""

