"""The viewer: one viser server and its panels.

    with ViewerServer(open_input("synthetic:0"), ViewerConfig(port=0)) as viewer:
        print(viewer.url)
        viewer.serve_forever()
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import viser

from viewer.camera import cameras_to_view, quat_to_matrix
from viewer.content import ViewerContent, scene_scale
from viewer.panels.frustums import CameraFrustums
from viewer.panels.scene import RenderSettings, ScenePanel
from viewer.panels.training import TrainingPanel


@dataclass
class ViewerConfig:
    """Where the server listens (loopback unless asked otherwise) and how it renders."""

    host: str = "127.0.0.1"
    port: int = 8080  # taken: viser tries the next ports; 0 picks a free one
    render: RenderSettings = field(default_factory=RenderSettings)
    poll_s: float = 1.0  # how often a run's scalars.jsonl is re-read


class ViewerServer:
    """Starts on construction; `close()` (or leaving the `with` block) stops every thread it started."""

    def __init__(self, content: ViewerContent, config: ViewerConfig | None = None, verbose: bool = False):
        self.content = content
        self.config = config or ViewerConfig()
        self.server = viser.ViserServer(host=self.config.host, port=self.config.port,
                                        label=f"scene3d · {content.title}", verbose=verbose)
        self.panels: list = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        content = self.content
        if content.home is not None:
            self._set_initial_camera()
        if content.source is not None:
            self.scene = ScenePanel(self.server, content.source, self.config.render)
            self.panels.append(self.scene)
        if content.dataset is not None:
            self.frustums = CameraFrustums(self.server, content.dataset, scale=scene_scale(content))
            self.panels.append(self.frustums)
        if content.run_dir is not None:
            self.training = TrainingPanel(self.server, content.run_dir, self.config.poll_s)
            self.panels.append(self.training)
        for factory in content.extra_panels:
            self.panels.append(factory(self.server))

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
        host = self.config.host
        return f"http://{'localhost' if host in ('0.0.0.0', '::') else host}:{self.port}"  # noqa: S104

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
