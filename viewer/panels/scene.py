"""Server-side rendering from each browser's camera.

Every client gets a `ProgressiveRenderer`: one background thread that renders the newest camera
pose at preview resolution and JPEG quality while the camera moves (intermediate poses are
dropped, never queued), then once more at full resolution and quality when the camera has rested
for `settle_s`. The scheduling is plain Python; `ScenePanel` only wires it to viser.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from scene3d.config import Range, check
from viewer.camera import ViewState
from viewer.sources import Frame, SceneSource, render_view

# Background pixels with no depth are sent this far away (viser decodes up to ~167 units), so
# viser's own objects (frustums, grid) are drawn over empty background.
_FAR = 160.0
MAX_SIDE = 1024  # the longest side of a rendered frame, in pixels, whatever a client or a config asks for


@dataclass
class RenderSettings:
    """Full-quality resolution (longer side, pixels) and the preview used while the camera moves."""

    max_side: Annotated[int, Range(16, MAX_SIDE)] = MAX_SIDE
    """Longer side of a full-quality frame at most, in pixels (the GUI slider changes it live)."""
    match_canvas: bool = True
    """Full-quality frames at the browser canvas's resolution (device pixels, HiDPI included), up to max_side."""
    browser_splats: bool = True
    """Open Gaussian scenes on the browser-drawn splats (off: on the server's rgb, faster in a browser without GPU)."""
    preview_scale: Annotated[float, Range(0, 1, above=True)] = 0.25
    """Preview frames (while the camera moves) are this fraction of the full resolution."""
    preview_jpeg: Annotated[int, Range(1, 100)] = 50
    """JPEG quality of preview frames."""
    full_jpeg: Annotated[int, Range(1, 100)] = 90
    """JPEG quality of full frames."""
    settle_s: Annotated[float, Range(0, 60)] = 0.25
    """Seconds without camera motion before the full-quality frame is rendered."""
    renders_at_once: Annotated[int, Range(1, 64)] = 2
    """Frames rendered at the same time, over all clients (with MAX_SIDE, this bounds render memory)."""

    def __post_init__(self) -> None:
        check(self)


class ProgressiveRenderer:
    """Render the newest requested view in a background thread: preview first, full when at rest.

    `render(view, full)` makes a Frame; `show(frame, full)` displays it; errors go to `on_error`
    and the thread keeps serving later requests.
    """

    def __init__(self, render: Callable[[ViewState, bool], Frame | None],
                 show: Callable[[Frame | None, bool], None],
                 settle_s: float = 0.25, on_error: Callable[[BaseException], None] | None = None,
                 name: str = "viewer-render"):
        self._render, self._show, self._on_error = render, show, on_error
        self.settle_s = settle_s
        self._cond = threading.Condition()
        self._view: ViewState | None = None
        self._version = 0  # bumped by every request
        self._rendered = 0  # version of the newest frame shown
        self._full_done = True  # whether that frame was full quality
        self._changed_at = 0.0
        self._skip_preview = False
        self._stopping = False
        self.frames_shown = {"preview": 0, "full": 0}
        self.last_frame: Frame | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def request(self, view: ViewState | None = None, full: bool = False) -> None:
        """Ask for `view` (None: the last one again, e.g. after a buffer switch). `full` skips the preview."""
        with self._cond:
            if view is not None:
                self._view = view
            if self._view is None:
                return
            self._version += 1
            self._changed_at = time.monotonic()
            self._skip_preview = full
            self._cond.notify()

    def _next_job(self) -> tuple[ViewState, int, bool] | None:
        """Block until there is work: (view, version, full), or None when stopping."""
        with self._cond:
            while not self._stopping:
                if self._version != self._rendered:
                    return self._view, self._version, self._skip_preview
                if not self._full_done:
                    wait = self.settle_s - (time.monotonic() - self._changed_at)
                    if wait <= 0:
                        return self._view, self._version, True
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _loop(self) -> None:
        while (job := self._next_job()) is not None:
            view, version, full = job
            try:
                frame = self._render(view, full)
                if self._stopping:  # the client left while this frame rendered
                    return
                self._show(frame, full)
                self.last_frame = frame
                self.frames_shown["full" if full else "preview"] += 1
            except Exception as err:  # a bad frame must not kill the client's renderer
                if self._on_error is None:
                    traceback.print_exc()
                else:
                    self._on_error(err)
            with self._cond:
                self._rendered, self._full_done = version, full

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once the newest request has been shown at full quality (for tests and scripts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if self._rendered == self._version and self._full_done:
                    return True
            time.sleep(0.01)
        return False

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class ScenePanel:
    """GUI folder "Scene" (buffer, resolution, last render time) and one renderer per client. The source
    can be switched (`set_source`, several scenes in one viewer); None shows no server-rendered picture,
    nor does a buffer the source's browser draws (its `browser_buffers`, e.g. Gaussian splats)."""

    def __init__(self, server, source: SceneSource | None, settings: RenderSettings | None = None):
        self.server, self.source = server, source
        self.settings = settings or RenderSettings()
        self._renderers: dict[int, ProgressiveRenderer] = {}
        self._lock = threading.Lock()
        self._render_slots = threading.BoundedSemaphore(self.settings.renders_at_once)
        self._closed = False
        buffers = source.buffers if source is not None else ("rgb",)
        with server.gui.add_folder("Scene", visible=source is not None) as self.folder:
            self.buffer = server.gui.add_dropdown("Buffer", buffers, initial_value=buffers[0] if source is None
                                                  else self.first_buffer(source))
            self.resolution = server.gui.add_slider("Resolution", min=64, max=MAX_SIDE, step=32,
                                                    initial_value=self.settings.max_side,
                                                    hint="Longer side of a full frame (at most, when matching)")
            self.match_canvas = server.gui.add_checkbox("Match canvas", initial_value=self.settings.match_canvas,
                                                        hint="Full frames at the canvas's own resolution")
            self.status = server.gui.add_markdown("_waiting for a camera_")
            self.legend = server.gui.add_markdown("", visible=False)
            self.legend_image = server.gui.add_image(np.full((8, 8, 3), 255, np.uint8), visible=False)
        self.listeners: list[Callable[[str], None]] = []  # told the buffer shown (browser-drawn nodes)
        self.buffer.on_update(lambda _: self._buffer_changed())
        self.resolution.on_update(lambda _: self._refresh_all())
        self.match_canvas.on_update(lambda _: self._refresh_all())
        server.on_client_connect(self._connect)
        server.on_client_disconnect(self._disconnect)

    def set_source(self, source: SceneSource | None) -> None:
        """Render `source` from now on (its first buffer, or the current one when it has it)."""
        with self._render_slots:  # no render of the old source is in flight past this point
            self.source = source
        if source is not None:
            keep = self.buffer.value if self.buffer.value in source.buffers else self.first_buffer(source)
            self.buffer.options = source.buffers
            self.buffer.value = keep
        self.folder.visible = source is not None
        self._buffer_changed()

    def first_buffer(self, source: SceneSource) -> str:
        """The buffer a source opens on: its first, or its first server buffer without `browser_splats`."""
        drawn = () if self.settings.browser_splats else getattr(source, "browser_buffers", ())
        return next((b for b in source.buffers if b not in drawn), source.buffers[0])

    def _buffer_changed(self) -> None:
        for listener in self.listeners:
            listener(str(self.buffer.value) if self.source is not None else "")
        self._refresh_all()

    def render(self, view: ViewState, full: bool) -> Frame | None:
        """The frame a client sees for `view`: full or preview resolution of the selected buffer (at most
        MAX_SIDE pixels on a side, at most `renders_at_once` renders at a time over all clients); None
        when there is no source."""
        side = min(max(int(self.resolution.value), 16), MAX_SIDE)
        if self.match_canvas.value and view.canvas_side > 0:
            side = min(side, max(view.canvas_side, 16))
        if not full:
            side = max(16, round(side * self.settings.preview_scale))
        with self._render_slots:
            if self.source is None:
                return None
            start = time.perf_counter()
            buffer = str(self.buffer.value)
            if buffer not in self.source.buffers:  # switched away from a source between the two reads
                buffer = self.source.buffers[0]
            if buffer in getattr(self.source, "browser_buffers", ()):
                self.status.content = f"{buffer}: drawn by your browser at the canvas's resolution"
                self.legend.visible = self.legend_image.visible = False
                return None
            frame = render_view(self.source, view, buffer, side)
        if full:
            h, w = frame.image.shape[:2]
            self.status.content = f"{buffer}: {w}x{h} in {time.perf_counter() - start:.2f} s"
            self._show_legend(frame)
        return frame

    def _show_legend(self, frame: Frame) -> None:
        """The legend of the buffer shown (hidden for plain colour)."""
        legend = frame.legend
        self.legend.visible = legend is not None
        self.legend_image.visible = legend is not None and legend.image is not None
        if legend is not None:
            self.legend.content = legend.caption
            if legend.image is not None:
                self.legend_image.image = legend.image

    def _connect(self, client) -> None:
        def show(frame: Frame | None, full: bool) -> None:
            if client.client_id not in self.server.get_clients():
                return
            if frame is None:
                client.scene.set_background_image(None)
                return
            depth = None if frame.depth is None else frame.depth.masked_fill(frame.depth <= 0, _FAR).numpy()
            quality = self.settings.full_jpeg if full else self.settings.preview_jpeg
            client.scene.set_background_image(frame.to_uint8(), format="jpeg", jpeg_quality=quality, depth=depth)

        def on_error(err: BaseException) -> None:
            self.status.content = f"render failed: {type(err).__name__}: {err}"

        renderer = ProgressiveRenderer(self.render, show, self.settings.settle_s, on_error,
                                       name=f"viewer-render-{client.client_id}")
        with self._lock:
            self._renderers[client.client_id] = renderer
            closed = self._closed
        # The client may have left (or the panel closed) while this callback waited in the pool.
        if closed or client.client_id not in self.server.get_clients():
            self._disconnect(client)
            return
        client.camera.on_update(lambda camera: renderer.request(ViewState.from_handle(camera)))
        renderer.request(ViewState.from_handle(client.camera))

    def _disconnect(self, client) -> None:
        with self._lock:
            renderer = self._renderers.pop(client.client_id, None)
        if renderer is not None:
            renderer.stop()

    def _refresh_all(self) -> None:
        with self._lock:
            renderers = list(self._renderers.values())
        for renderer in renderers:
            renderer.request(full=True)

    @property
    def renderers(self) -> list[ProgressiveRenderer]:
        with self._lock:
            return list(self._renderers.values())

    @property
    def n_renderers(self) -> int:
        return len(self.renderers)

    def close(self) -> None:
        with self._lock:
            renderers, self._renderers, self._closed = list(self._renderers.values()), {}, True
        for renderer in renderers:
            renderer.stop()
