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
from dataclasses import dataclass, field

import numpy as np
import viser
from viser._messages import GuiUpdateMessage

from viewer.access import Access, guarded_handshakes, is_loopback, new_token, sanitize_gui_update
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
    token: str | None = None  # the URL's access token when `host` is not loopback (None: a random one)


class ViewerServer:
    """Starts on construction; `close()` (or leaving the `with` block) stops every thread it started."""

    def __init__(self, content: ViewerContent, config: ViewerConfig | None = None, verbose: bool = False):
        self.content = content
        self.config = config or ViewerConfig()
        self.access = Access(None if is_loopback(self.config.host) else self.config.token or new_token())
        with guarded_handshakes(self.access):
            self.server = viser.ViserServer(host=self.config.host, port=self.config.port,
                                            label=f"scene3d · {content.title}", verbose=verbose)
        self.panels: list = []
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


def _default_route_address() -> str:
    """This machine's address on its default route (a UDP socket is aimed, nothing is sent), else its name."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only the routing table is consulted
        return probe.getsockname()[0]
    return socket.gethostname()
