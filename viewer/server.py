"""The viewer: one viser server and its panels.

    with ViewerServer(open_input("synthetic:0"), ViewerConfig(port=0)) as viewer:
        print(viewer.url)
        viewer.serve_forever()

It trusts no client (`viewer.access`): bound to loopback (the default) it answers only requests whose
`Host` is a loopback name; bound to another interface it needs the token in `viewer.url` (a warning
on stderr says so at start); websockets from another origin are refused; a client may only set GUI
values of the right kind and range; renders are bounded in size (`MAX_SIDE`) and in number at once.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import viser
from viser._messages import GuiUpdateMessage

from viewer.access import Access, guarded_handshakes, is_loopback, new_token, sanitize_gui_update
from viewer.camera import cameras_to_view, quat_to_matrix
from viewer.content import ViewerContent, scene_scale
from viewer.listen import choose_port
from viewer.panels.frustums import CameraFrustums
from viewer.panels.paths import CameraPathPanel
from viewer.panels.scene import RenderSettings, ScenePanel
from viewer.panels.training import TrainingPanel
from viewer.panels.world import UpChoice, WorldPanel


@dataclass
class ViewerConfig:
    """Where the server listens (loopback unless asked otherwise) and how it renders."""

    host: str = "127.0.0.1"
    port: int = 8080  # taken: the next free one, said on stderr (`strict_port`: an error); 0 picks a free one
    render: RenderSettings = field(default_factory=RenderSettings)
    poll_s: float = 1.0  # how often a run's scalars.jsonl is re-read
    token: str | None = None  # the URL's access token when `host` is not loopback (None: a random one)
    strict_port: bool = False
    up: UpChoice = "auto"  # the world's up axis (auto: from the cameras where there are some, else +z)
    export_dir: Path = Path("outputs/viewer")  # camera paths, videos and exported views


@dataclass
class SceneParts:
    """What one scene added to the viewer: its scene-graph root, its GUI folder (None when it is the only
    scene), its panels."""

    frame: object
    folder: object | None
    panels: list = field(default_factory=list)


class ViewerServer:
    """Starts on construction; `close()` (or leaving the `with` block) stops every thread it started.
    Given several scenes (one per input path), a "Scenes" dropdown switches between them."""

    def __init__(self, scenes: ViewerContent | Sequence[ViewerContent], config: ViewerConfig | None = None,
                 verbose: bool = False):
        self.scenes = [scenes] if isinstance(scenes, ViewerContent) else list(scenes)
        if not self.scenes:
            raise ValueError("a viewer needs at least one scene")
        self.config = config or ViewerConfig()
        self.current = default_scene(self.scenes)
        port, note = choose_port(self.config.host, self.config.port, self.config.strict_port)
        self.access = Access(None if is_loopback(self.config.host) else self.config.token or new_token())
        with guarded_handshakes(self.access):
            self.server = viser.ViserServer(host=self.config.host, port=port,
                                            label=f"scene3d · {' | '.join(scene_names(self.scenes))}"[:120],
                                            verbose=verbose)
        if note is not None:
            print(f"note: {note}", file=sys.stderr, flush=True)
        self.panels: list = []
        self.scene: ScenePanel | None = None
        self.paths: CameraPathPanel | None = None
        try:
            self._sanitize_gui_updates()
            self._build()
        except BaseException:
            self.close()
            raise
        if self.access.token is not None:
            print(f"warning: the viewer listens on {self.config.host}, reachable from other machines: whoever has "
                  f"its URL (it holds an access token) sees what it shows and can make it render; share it only "
                  f"with people you trust: {self.url}", file=sys.stderr, flush=True)

    @property
    def content(self) -> ViewerContent:
        """The scene shown now."""
        return self.scenes[self.current]

    def _sanitize_gui_updates(self) -> None:
        """Every client's GUI update passes `sanitize_gui_update` before viser applies it (a handler put
        first in viser 1.1's handler list, looking the input up in viser's registry of GUI inputs)."""
        inputs = self.server.gui._gui_input_handle_from_uuid

        def sanitize(_client_id, message: GuiUpdateMessage) -> None:
            handle = inputs.get(message.uuid)
            if handle is None:
                message.updates.clear()
            else:
                sanitize_gui_update(handle._impl, message.updates)

        self.server._websock_server._incoming_handlers[GuiUpdateMessage].insert(0, sanitize)

    def _build(self) -> None:
        """Panels in this order: the scene switch, server rendering, each scene's own panels (adapters'
        first, e.g. Glimpses, then cameras and the folded training charts), camera paths (when something
        renders on the server), the world's up axis."""
        content, server = self.content, self.server
        if content.home is not None:
            self._set_initial_camera()
        several = len(self.scenes) > 1
        if several:
            names = scene_names(self.scenes)
            with server.gui.add_folder("Scenes"):
                self.scene_switch = server.gui.add_dropdown("Scene", names, initial_value=names[self.current])
            self.scene_switch.on_update(lambda _: self.show_scene(names.index(str(self.scene_switch.value))))
        if any(s.source is not None for s in self.scenes):
            self.scene = ScenePanel(server, content.source, self.config.render)
            self.panels.append(self.scene)
        self.scene_parts = [self._build_scene(i, s, several) for i, s in enumerate(self.scenes)]
        if self.scene is not None:
            for parts in self.scene_parts:  # browser-drawn nodes follow the buffer shown
                self.scene.listeners += [p.show_buffer for p in parts.panels if hasattr(p, "show_buffer")]
            self.scene.set_source(content.source)
            self.paths = CameraPathPanel(server, lambda: self.content.source, self._dataset_cameras,
                                         self.config.export_dir, lambda: str(self.scene.buffer.value),
                                         scene_scale(content))
            self.panels.append(self.paths)
        cameras = next((s.dataset.cameras for s in [content, *self.scenes] if s.dataset is not None), None)
        self.world = WorldPanel(server, self.config.up, cameras)
        self.panels.append(self.world)

    def _dataset_cameras(self):
        dataset = self.content.dataset
        return None if dataset is None else dataset.cameras

    def _build_scene(self, index: int, content: ViewerContent, several: bool) -> SceneParts:
        """One scene's scene-graph root, GUI folder and panels (shown only while it is the current scene)."""
        visible = index == self.current
        root = f"/scene{index}"
        parts = SceneParts(self.server.scene.add_frame(root, show_axes=False, visible=visible),
                           self.server.gui.add_folder(content.title, visible=visible) if several else None)
        with parts.folder or contextlib.nullcontext():
            if content.note is not None or not content.viewable:
                self.server.gui.add_markdown(content.note or "_nothing to show: no renderable checkpoint, cameras, "
                                             "curves or geometry_")
            parts.panels = [factory(self.server, root) for factory in content.extra_panels]
            if hasattr(content.source, "browser_panel") and (drawn := content.source.browser_panel(self.server, root)):
                parts.panels.append(drawn)
            if content.dataset is not None:
                parts.panels.append(CameraFrustums(self.server, content.dataset, scale=scene_scale(content),
                                                   root=root, up=lambda: self.world.up))
            if content.run_dir is not None:
                alone = content.source is None and not content.extra_panels and content.dataset is None
                parts.panels.append(TrainingPanel(self.server, content.run_dir, self.config.poll_s, expanded=alone))
        self.panels += parts.panels
        return parts

    def show_scene(self, index: int) -> None:
        """Make scene `index` the one shown: its source rendered, its nodes and panels visible."""
        self.current = index
        for i, parts in enumerate(self.scene_parts):
            parts.frame.visible = i == index
            if parts.folder is not None:
                parts.folder.visible = i == index
        if self.scene is not None:
            self.scene.set_source(self.content.source)

    def _panel(self, kind: type):
        return next((p for p in self.scene_parts[self.current].panels if isinstance(p, kind)), None)

    @property
    def frustums(self) -> CameraFrustums | None:
        """The current scene's camera frustums."""
        return self._panel(CameraFrustums)

    @property
    def training(self) -> TrainingPanel | None:
        """The current scene's training charts."""
        return self._panel(TrainingPanel)

    def _set_initial_camera(self) -> None:
        view = cameras_to_view(self.content.home)
        position = np.asarray(view.position)
        forward = quat_to_matrix(np.asarray(view.wxyz))[:, 2]
        distance = max(float(np.dot(np.asarray(self.content.center) - position, forward)), 1e-2)
        self.server.initial_camera.position = tuple(position)
        self.server.initial_camera.look_at = tuple(position + distance * forward)
        self.server.initial_camera.fov = view.fov_y

    @property
    def port(self) -> int:
        return self.server.get_port()

    @property
    def url(self) -> str:
        """Where a browser opens the viewer: for a wildcard host this machine's address on its default
        route; with a token, under `/<token>/`."""
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding it
            host = _default_route_address()
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}" + ("" if self.access.token is None else f"/{self.access.token}/")

    def serve_forever(self) -> None:
        """Block until interrupted (Ctrl-C raises KeyboardInterrupt in the caller)."""
        threading.Event().wait()

    def close(self) -> None:
        for panel in self.panels:
            panel.close()
        self.panels = []
        self.server.stop()

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scene_names(scenes: Sequence[ViewerContent]) -> list[str]:
    """Distinct dropdown names: the titles, numbered where two are equal."""
    titles = [s.title for s in scenes]
    return [t if titles.count(t) == 1 else f"{t} ({i + 1})" for i, t in enumerate(titles)]


def default_scene(scenes: Sequence[ViewerContent]) -> int:
    """The scene shown first: the first run that renders a model (so `view.py DATASET RUN` opens on the
    model), else the first scene."""
    return next((i for i, s in enumerate(scenes) if s.run_dir is not None and s.source is not None), 0)


def _default_route_address() -> str:
    """This machine's address on its default route (a UDP socket is aimed, nothing is sent), else its name."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only the routing table is consulted
        return probe.getsockname()[0]
    return socket.gethostname()
