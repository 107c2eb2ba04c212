"""Issue 25, finding 3: the viewer trusts no client. Websockets from another origin and requests
naming another host are refused; bound to a non-loopback interface it needs the token it prints
(with a warning); a client's GUI values are clamped to the input's own range and kind; camera
values are bounded before rendering."""

from __future__ import annotations

import asyncio
import http.client
import math
import time

import msgspec
import pytest
import viser
import websockets

from viewer.camera import ViewState
from viewer.inputs import open_input
from viewer.server import ViewerConfig, ViewerServer


def _config(**overrides) -> ViewerConfig:
    config = ViewerConfig(port=0, **overrides)
    config.render.max_side, config.render.settle_s = 64, 0.05
    return config


@pytest.fixture(scope="module")
def viewer():
    with ViewerServer(open_input("synthetic:0"), _config()) as v:
        yield v


def _status(port: int, path: str = "/", headers: dict | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        return conn.getresponse().status
    finally:
        conn.close()


async def _connect(url: str, origin: str | None, send: list[bytes] = ()) -> None:
    async with websockets.connect(url, origin=origin, subprotocols=[f"viser-v{viser.__version__}"],
                                  max_size=None) as ws:
        for message in send:
            await ws.send(message)
        await asyncio.wait_for(ws.recv(), timeout=20)


def test_websocket_from_another_origin_is_refused(viewer):
    url = viewer.url.replace("http", "ws")
    with pytest.raises(websockets.exceptions.InvalidStatus, match="403"):
        asyncio.run(_connect(url, "http://evil.example"))
    asyncio.run(_connect(url, f"http://127.0.0.1:{viewer.port}"))  # its own page connects
    asyncio.run(_connect(url, None))  # and so do non-browser clients, which send no Origin


def test_requests_naming_another_host_are_refused(viewer):
    assert _status(viewer.port) == 200
    assert _status(viewer.port, headers={"Host": "rebound.example"}) == 403  # a DNS-rebinding page


def _gui_update(uuid: str, value) -> bytes:
    return msgspec.msgpack.encode({"type": "GuiUpdateMessage", "uuid": uuid, "updates": {"value": value}})


def _wait_for(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize(("value", "expected"), [(8192, 1024), (-5, 64), (512, 512)])
def test_a_clients_resolution_is_clamped_to_the_sliders_range(viewer, value, expected):
    """Its slider's range, 64..1024 (`viewer.panels.scene.MAX_SIDE`): 8192 made every frame take 12 s."""
    slider = viewer.scene.resolution
    slider.value = 256
    asyncio.run(_connect(viewer.url.replace("http", "ws"), None, [_gui_update(slider._impl.uuid, value)]))
    assert _wait_for(lambda: slider.value == expected), slider.value


def test_values_of_the_wrong_kind_or_unknown_inputs_change_nothing(viewer):
    slider, buffer = viewer.scene.resolution, viewer.scene.buffer
    slider.value, buffer.value = 256, buffer.value
    before = buffer.value
    messages = [_gui_update(slider._impl.uuid, "huge"), _gui_update(slider._impl.uuid, float("nan")),
                _gui_update(buffer._impl.uuid, "not-a-buffer"), _gui_update("no-such-input", 1),
                _gui_update(slider._impl.uuid, 320)]  # handled in order: once this one shows, the others were
    asyncio.run(_connect(viewer.url.replace("http", "ws"), None, messages))
    assert _wait_for(lambda: slider.value == 320), slider.value
    assert buffer.value == before


def test_sanitize_keeps_only_a_value_of_the_inputs_kind_and_range():
    from viewer.access import sanitize_gui_update

    class Props:
        min, max, options = 0.0, 1.0, None

    class State:
        value, props = 0.5, Props()

    for sent, kept in [({"value": 7.0}, {"value": 1.0}), ({"value": True}, {}), ({"min": -1e9}, {}),
                       ({"value": math.inf}, {}), ({"value": [1, 2]}, {})]:
        sanitize_gui_update(State(), sent)
        assert sent == kept


def test_a_non_loopback_host_needs_the_printed_token_and_warns(capfd):
    with ViewerServer(open_input("synthetic:0"), _config(host="0.0.0.0", token="s3cret")) as v:  # noqa: S104
        err = capfd.readouterr().err
        assert "warning:" in err and "/s3cret/" in err and v.url.endswith("/s3cret/")
        assert _status(v.port) == 403
        assert _status(v.port, "/wrong/") == 403
        assert _status(v.port, "/s3cret/") == 200
        url = f"ws://127.0.0.1:{v.port}/s3cret/"
        asyncio.run(_connect(url, None))
        with pytest.raises(websockets.exceptions.InvalidStatus, match="403"):
            asyncio.run(_connect(f"ws://127.0.0.1:{v.port}/", None))


def test_access_rules_without_a_server():
    from viewer.access import Access

    loopback, tokened = Access(), Access("t0k")
    assert loopback.refusal("/", {"Host": "localhost:8080"}) is None
    assert loopback.refusal("/", {"Host": "[::1]:8080"}) is None
    assert "loopback" in loopback.refusal("/", {"Host": "example.com"})
    assert "token" in tokened.refusal("/", {"Host": "10.0.0.2:8080"})
    assert tokened.refusal("/t0k/app.js", {"Host": "10.0.0.2:8080"}) is None
    ws = {"Host": "localhost:8080", "Upgrade": "websocket", "Origin": "http://localhost:8081"}
    assert "origin" in loopback.refusal("/", ws)


def test_camera_values_from_a_client_are_bounded():
    view = ViewState((0.0, 0.0, 0.0, 0.0), (math.nan, 1e30, -1e30), fov_y=math.inf, aspect=1e9)
    assert view.wxyz == (1.0, 0.0, 0.0, 0.0) and view.position == (0.0, 1e6, -1e6)
    assert 0 < view.fov_y < math.pi and view.aspect == 16.0
