"""The viewer without a browser: camera conversion, render on demand, panels' update logic, the
server's life cycle under real websocket clients. The headless-browser test is marked slow."""

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import imageio.v3 as iio
import msgspec
import numpy as np
import pytest
import torch
import viser
import viser.transforms as vtf
import websockets
import zstandard

from lab.demo.viewer import run_stage
from scene3d.cameras import Cameras, look_at, orbit_cameras
from scene3d.data.dataset import make_multiview_dataset
from scene3d.data.formats import save_blender
from scene3d.data.generate import WorldDatasetConfig, write_world_dataset
from scene3d.data.synthetic import make_world, render_world
from scene3d.errors import DataError
from scene3d.metrics import psnr
from scene3d.runs import RunDir
from scene3d.viz import colorize_labels, colorize_normals, pca_rgb
from viewer.camera import ViewState, cameras_to_view, matrix_to_quat, quat_to_matrix, view_to_cameras
from viewer.content import ViewerContent
from viewer.inputs import open_input, open_inputs
from viewer.panels.frustums import CameraFrustums, evenly_spaced, thumbnail
from viewer.panels.scene import ProgressiveRenderer
from viewer.panels.training import ScalarLog
from viewer.server import ViewerConfig, ViewerServer
from viewer.sources import BUFFERS, Frame, SyntheticSource, render_view


def _random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q * torch.det(q)[:, None, None]  # proper rotations


# camera conversion ------------------------------------------------------------------------------
def test_quaternion_matches_viser_and_round_trips():
    for rot in _random_rotations(50).numpy():
        q = matrix_to_quat(rot)
        np.testing.assert_allclose(quat_to_matrix(q), rot, atol=1e-10)
        np.testing.assert_allclose(vtf.SO3(q).as_matrix(), rot, atol=1e-10)  # viser's wxyz convention
        q_viser = vtf.SO3.from_matrix(rot).wxyz
        np.testing.assert_allclose(np.abs(q @ q_viser), 1.0, atol=1e-10)  # same rotation, up to sign


def _viser_camera_looking_at(position, target, fov_y, aspect) -> ViewState:
    """A camera as viser describes it: OpenCV T_world_camera (+z to the target, -y towards world up)."""
    position, target = np.asarray(position, float), np.asarray(target, float)
    z = (target - position) / np.linalg.norm(target - position)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return ViewState(tuple(vtf.SO3.from_matrix(np.stack([x, y, z], 1)).wxyz), tuple(position), fov_y, aspect)


def test_browser_camera_sees_the_point_it_looks_at_in_the_image_centre():
    position, target = np.array([2.0, -3.0, 1.5]), np.array([0.2, 0.1, 0.3])
    view = _viser_camera_looking_at(position, target, fov_y=math.radians(50), aspect=16 / 9)
    cams = view_to_cameras(view, 320, 180)
    forward = (target - position) / np.linalg.norm(target - position)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    up = np.cross(right, forward)
    up /= np.linalg.norm(up)
    half = math.radians(25)
    points = torch.tensor(np.stack([
        target,
        target + 0.3 * right / np.linalg.norm(right),
        target + 0.3 * up,
        position + math.cos(half) * forward + math.sin(half) * up,  # on the top edge: fov is vertical
    ]), dtype=torch.float32)
    uv, z = cams.project(points)
    uv = uv[0].numpy()
    np.testing.assert_allclose(uv[0], [160.0, 90.0], atol=1e-3)
    assert uv[1, 0] > 160 + 5 and abs(uv[1, 1] - 90) < 1e-2  # world right -> image right
    assert uv[2, 1] < 90 - 5 and abs(uv[2, 0] - 160) < 1e-2  # world up -> image up (v decreases)
    assert abs(uv[3, 1]) < 1e-2
    np.testing.assert_allclose(float(z[0, 0]), np.linalg.norm(target - position), rtol=1e-5)


def test_view_and_cameras_round_trip():
    cams = Cameras.from_fov(look_at(torch.tensor([[3.0, 1.0, 2.0], [-1.0, 4.0, 0.5]]), torch.zeros(3)),
                            math.radians(60), 200, 100)
    for i in range(2):
        view = cameras_to_view(cams, i)
        assert view.aspect == 2.0 and view.image_size(200) == (200, 100)
        back = view_to_cameras(view, 200, 100)
        torch.testing.assert_close(back.c2w[0], cams.c2w[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(back.K[0], cams.K[i], atol=1e-3, rtol=1e-5)
    assert ViewState((1, 0, 0, 0), (0, 0, 0), 1.0, 0.5).image_size(64) == (32, 64)


# render on demand ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world():
    return make_world(3)


def test_render_view_sizes_and_exact_buffers(world):
    source = SyntheticSource(world)
    home = orbit_cameras(1, 4.0, elevation_deg=35.0, width=48, height=27, target=(0.0, 0.0, 0.2))
    view = cameras_to_view(home)
    truth = {k: v[0] for k, v in render_world(world, view_to_cameras(view, 48, 27)).items()}
    assert truth["mask"].any() and not truth["mask"].all()
    frames = {b: render_view(source, view, b, max_side=48) for b in source.buffers}
    assert set(source.buffers) <= set(BUFFERS)
    for frame in frames.values():
        assert frame.image.shape == (27, 48, 3) and frame.image.min() >= 0 and frame.image.max() <= 1
        torch.testing.assert_close(frame.depth, truth["depth"])  # camera z, for compositing
    torch.testing.assert_close(frames["rgb"].image, truth["rgb"])
    torch.testing.assert_close(frames["labels"].image, colorize_labels(truth["semantic"]))
    torch.testing.assert_close(frames["normals"].image, colorize_normals(truth["normals"]))
    torch.testing.assert_close(frames["accumulation"].image[..., 0], truth["mask"].float())
    depth_img = frames["depth"].image
    assert (depth_img[~truth["mask"]] == 0).all() and (depth_img[truth["mask"]].sum(-1) > 0).all()
    # nearer is warmer: the turbo colour of the nearest hit has more red than that of the farthest
    d = truth["depth"].masked_fill(~truth["mask"], float("nan"))
    near, far = torch.nanquantile(d.flatten(), 0.02), torch.nanquantile(d.flatten(), 0.98)
    assert depth_img[(d - near).abs() < 0.05][:, 0].mean() > depth_img[(d - far).abs() < 0.05][:, 0].mean()
    assert render_view(source, view, "rgb", max_side=16).image.shape == (9, 16, 3)
    with pytest.raises(ValueError, match="features"):
        render_view(source, view, "features", max_side=16)


def test_pca_rgb_separates_feature_clusters():
    labels = torch.arange(4).repeat_interleave(16).reshape(8, 8)
    centres = torch.randn(4, 32, generator=torch.Generator().manual_seed(0)) * 5
    features = centres[labels] + 0.01 * torch.randn(8, 8, 32)
    rgb = pca_rgb(features)
    assert rgb.shape == (8, 8, 3) and rgb.min() >= 0 and rgb.max() <= 1
    means = torch.stack([rgb[labels == k].mean(0) for k in range(4)])
    assert torch.cdist(means, means)[~torch.eye(4, dtype=torch.bool)].min() > 0.1
    assert torch.isfinite(pca_rgb(torch.ones(4, 4, 2))).all()


# progressive rendering -----------------------------------------------------------------------------
def _view(x: float) -> ViewState:
    return ViewState((1.0, 0.0, 0.0, 0.0), (x, 0.0, 0.0), 1.0, 1.0)


def test_progressive_renderer_previews_while_moving_then_renders_full_once():
    shown: list[tuple[float, bool]] = []

    def render(view, full):
        time.sleep(0.01)
        return Frame(torch.zeros(2, 2, 3) + view.position[0] / 100)

    renderer = ProgressiveRenderer(render, lambda frame, full: shown.append((float(frame.image[0, 0, 0]), full)),
                                   settle_s=0.1)
    for i in range(30):  # a camera drag: 30 poses, faster than frames render
        renderer.request(_view(i))
        time.sleep(0.002)
    assert renderer.wait_idle(5.0)
    assert shown[-1] == (pytest.approx(0.29), True)  # the final pose, at full quality
    assert sum(full for _, full in shown) == 1  # full quality only once the camera rests
    assert len(shown) < 30  # stale poses are dropped, not queued
    renderer.request(full=True)  # a buffer switch: the same pose, straight to full quality
    assert renderer.wait_idle(5.0)
    assert shown[-1] == (pytest.approx(0.29), True) and renderer.frames_shown["full"] == 2
    renderer.stop()
    assert not renderer.alive


def test_progressive_renderer_survives_render_errors():
    errors = []

    def render(view, full):
        if view.position[0] == 1:
            raise RuntimeError("boom")
        return Frame(torch.zeros(1, 1, 3))

    renderer = ProgressiveRenderer(render, lambda f, full: None, settle_s=0.01, on_error=errors.append)
    renderer.request(_view(1))
    time.sleep(0.1)
    renderer.request(_view(2))
    assert renderer.wait_idle(5.0) and renderer.frames_shown["full"] == 1
    assert errors and "boom" in str(errors[0])
    renderer.stop()


# training scalars ----------------------------------------------------------------------------------
def test_scalar_log_reads_a_growing_file_incrementally(tmp_path):
    path = tmp_path / "scalars.jsonl"
    log = ScalarLog(path)
    assert log.poll() == 0  # not written yet
    run = RunDir(tmp_path)
    for step in range(3):
        run.log_scalars(step, {"loss": 1.0 / (step + 1)})
    assert log.poll() == 3 and log.series["loss"][0] == [0, 1, 2]
    with open(path, "a") as f:  # a writer caught mid-line
        f.write(json.dumps({"step": 3, "loss": 0.2, "psnr": 20.0})[:10])
    assert log.poll() == 0
    with open(path, "a") as f:
        f.write(json.dumps({"step": 3, "loss": 0.2, "psnr": 20.0})[10:] + "\n")
        f.write("not json\n" + json.dumps({"step": 4, "loss": float("nan"), "note": "x"}) + "\n")
    assert log.poll() == 2 and log.bad_lines == 1 and log.skipped_values == 2
    steps, values = log.arrays("loss")
    np.testing.assert_allclose(steps, [0, 1, 2, 3]) and np.testing.assert_allclose(values[-1], 0.2)
    assert log.arrays("psnr")[0].tolist() == [3] and log.last_step == 3
    run.log_scalars(2, {"loss": 0.7})  # resumed from a step-2 checkpoint: history from 2 is replaced
    run.close()
    log.poll()
    assert log.series["loss"] == ([0, 1, 2], [1.0, 0.5, 0.7])
    path.write_text(json.dumps({"step": 0, "loss": 9.0}) + "\n")  # replaced by a new run
    log.poll()
    assert log.series == {"loss": ([0], [9.0])}


# inputs ----------------------------------------------------------------------------------------------
def test_open_input_errors_name_the_path(tmp_path):
    (tmp_path / "scene.ply").write_bytes(b"ply\n")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    for spec, words in [(tmp_path / "missing", "does not exist"), (tmp_path / "scene.ply", "header"),
                        (tmp_path / "notes.txt", "cannot open .txt files"),
                        (tmp_path / "empty", "not a dataset folder"), ("synthetic:abc", "integer seed")]:
        with pytest.raises(DataError, match=words) as err:
            open_input(spec)
        assert str(spec) in str(err.value)


def test_open_input_takes_its_adapters_as_arguments(tmp_path):
    from viewer.inputs import FILE_ADAPTERS, RUN_ADAPTERS

    (tmp_path / "scene.xyz").write_text("1 2 3")
    with pytest.raises(DataError, match=r"cannot open \.xyz files \(it opens: \.ply\)"):
        open_input(tmp_path / "scene.xyz")
    xyz = {**FILE_ADAPTERS, ".xyz": lambda p: ViewerContent(p.name)}
    content = open_input(tmp_path / "scene.xyz", file_adapters=xyz)
    assert content.title == "scene.xyz"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "scalars.jsonl").write_text("")
    source = SyntheticSource(make_world(0))
    assert open_input(tmp_path / "run").source is None
    assert open_inputs([tmp_path / "run"], run_adapters=(*RUN_ADAPTERS, lambda p: source))[0].source is source
    assert len(RUN_ADAPTERS) == 2 and set(FILE_ADAPTERS) == {".ply"}  # the shipped tables are unchanged


def test_open_dataset_folder_with_and_without_its_world(tmp_path):
    out = tmp_path / "w"
    write_world_dataset(WorldDatasetConfig(out=out, seed=2, n_train=5, n_val=1, n_test=1, width=16, height=16),
                        progress=False)
    content = open_input(out)
    assert len(content.dataset) == 5 and isinstance(content.source, SyntheticSource)
    frame = render_view(content.source, cameras_to_view(content.dataset.cameras, 0), "rgb", 16)
    torch.testing.assert_close(frame.image, content.dataset.images[0], atol=1.5 / 255, rtol=0)  # PNG rounding
    splits = make_multiview_dataset(make_world(1), 4, 0, 0, 16, 16)
    save_blender(splits, tmp_path / "plain")
    plain = open_input(tmp_path / "plain")
    assert plain.source is None and len(plain.dataset) == 4


# the server ------------------------------------------------------------------------------------------
def _viewer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("viewer-")]


def _wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def synthetic_content():
    return open_input("synthetic:0")


def _small_render() -> ViewerConfig:
    config = ViewerConfig(port=0)
    config.render.max_side, config.render.settle_s = 64, 0.05
    return config


def test_server_starts_on_a_free_port_serves_the_page_and_stops_cleanly(synthetic_content):
    baseline = threading.active_count()
    with ViewerServer(synthetic_content, _small_render()) as viewer:
        assert viewer.config.host == "127.0.0.1" and viewer.port > 0
        page = urllib.request.urlopen(viewer.url, timeout=10).read().decode()  # noqa: S310 (loopback URL)
        assert "<html" in page.lower()
        assert viewer.server.initial_camera.fov == pytest.approx(synthetic_content.home.fov_y[0].item())
    assert _wait_until(lambda: threading.active_count() <= baseline), [t.name for t in threading.enumerate()]


def _camera_message(x: float, width: int = 320, height: int = 240) -> bytes:
    view = _viser_camera_looking_at([x, -4.0, 2.0], [0.0, 0.0, 0.2], math.radians(50), width / height)
    return msgspec.msgpack.encode({
        "type": "ViewerCameraMessage", "wxyz": list(view.wxyz), "position": list(view.position),
        "fov": view.fov_y, "near": 0.01, "far": 100.0, "image_height": height, "image_width": width,
        "look_at": [0.0, 0.0, 0.2], "up_direction": [0.0, 0.0, 1.0]})


def _message_types(frame: bytes) -> list[str]:
    """Decode one server->client websocket frame of viser's wire format (see viser/infra/_infra.py)."""
    size, csize = int.from_bytes(frame[:8], "little"), int.from_bytes(frame[8:16], "little")
    inner = zstandard.ZstdDecompressor().decompress(frame[16 : 16 + csize], max_output_size=size)
    return [m["type"] for m in msgspec.msgpack.decode(inner)["messages"]]


async def _client(url: str, moves: int, wait_for_image: bool) -> set[str]:
    seen: set[str] = set()
    async with websockets.connect(url, subprotocols=[f"viser-v{viser.__version__}"], max_size=None) as ws:
        for i in range(moves):
            await ws.send(_camera_message(0.1 * i))
        deadline = time.monotonic() + 20
        while wait_for_image and "BackgroundImageMessage" not in seen and time.monotonic() < deadline:
            frame = await asyncio.wait_for(ws.recv(), timeout=20)
            seen.update(_message_types(frame))
    return seen


@pytest.mark.filterwarnings("ignore:Queued a BackgroundImageMessage on a closed connection")
def test_many_clients_connect_render_and_leave_without_leaks(synthetic_content, capfd):
    baseline = threading.active_count()
    with ViewerServer(synthetic_content, _small_render()) as viewer:
        ws_url = viewer.url.replace("http", "ws")
        seen = asyncio.run(_client(ws_url, moves=5, wait_for_image=True))
        assert {"BackgroundImageMessage", "CameraFrustumMessage", "GuiFolderMessage"} <= seen

        async def crowd():  # 3 waves of 8 clients, most leaving before their first frame arrives
            for _ in range(3):
                await asyncio.gather(*[_client(ws_url, moves=3, wait_for_image=(k == 0)) for k in range(8)])

        asyncio.run(crowd())
        assert _wait_until(lambda: viewer.scene.n_renderers == 0 and not _viewer_threads()), _viewer_threads()
        assert viewer.server.get_clients() == {}
        assert asyncio.run(_client(ws_url, moves=1, wait_for_image=True))  # still serving
        assert urllib.request.urlopen(viewer.url, timeout=10).status == 200  # noqa: S310
    assert _wait_until(lambda: threading.active_count() <= baseline), [t.name for t in threading.enumerate()]
    assert "Traceback" not in capfd.readouterr().err  # no callback failed in viser's thread pool


def test_clicking_a_frustum_moves_that_clients_camera(synthetic_content):
    with ViewerServer(synthetic_content, _small_render()) as viewer:
        ws_url = viewer.url.replace("http", "ws")

        async def connected_client():
            async with websockets.connect(ws_url, subprotocols=[f"viser-v{viser.__version__}"], max_size=None) as ws:
                await ws.send(_camera_message(0.0))
                assert await asyncio.to_thread(_wait_until, lambda: len(viewer.server.get_clients()) == 1)
                client = next(iter(viewer.server.get_clients().values()))
                target = viewer.frustums.select(3, client)
                camera = client.camera
                return target, camera.position.copy(), camera.look_at.copy(), camera.fov

        target, position, look, fov = asyncio.run(connected_client())
        cams = synthetic_content.dataset.cameras
        np.testing.assert_allclose(position, cams.centers[3].numpy(), atol=1e-5)
        np.testing.assert_allclose(fov, cams.fov_y[3].item(), atol=1e-6)
        direction = (look - position) / np.linalg.norm(look - position)
        np.testing.assert_allclose(direction, cams.forward[3].numpy(), atol=1e-5)
        assert viewer.frustums.image.visible and "view 3" in viewer.frustums.caption.content


def test_jumping_to_a_rolled_camera_keeps_orbiting_about_the_world_up(tmp_path):
    splits = make_multiview_dataset(make_world(1), 4, 0, 0, 16, 16)
    roll = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about the optical axis
    cams = splits["train"].cameras
    cams.c2w[2, :3, :3] = cams.c2w[2, :3, :3] @ roll
    with ViewerServer(ViewerContent("cams", dataset=splits["train"]), ViewerConfig(port=0, up="+z")) as viewer:
        ws_url = viewer.url.replace("http", "ws")

        async def jump():
            async with websockets.connect(ws_url, subprotocols=[f"viser-v{viser.__version__}"], max_size=None) as ws:
                await ws.send(_camera_message(0.0))
                assert await asyncio.to_thread(_wait_until, lambda: len(viewer.server.get_clients()) == 1)
                client = next(iter(viewer.server.get_clients().values()))
                target = viewer.frustums.select(2, client)
                camera = client.camera
                return target, camera.up_direction.copy(), camera.position.copy(), camera.look_at.copy()

        target, up, position, look = asyncio.run(jump())
    # The browser camera sits on the rolled camera and looks along its axis, but keeps the world's up
    # (before: the camera's own tilted up, and orbiting then turned about it and under the ground).
    np.testing.assert_allclose(target["up"], [0, 0, 1]) and np.testing.assert_allclose(up, [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(position, cams.centers[2].numpy(), atol=1e-5)
    direction = (look - position) / np.linalg.norm(look - position)
    np.testing.assert_allclose(direction, cams.forward[2].numpy(), atol=1e-5)


def test_frustum_helpers():
    assert evenly_spaced(5, 10) == [0, 1, 2, 3, 4]
    picked = evenly_spaced(1000, 7)
    assert len(picked) == 7 and picked[0] == 0 and picked[-1] == 999
    thumb = thumbnail(torch.rand(100, 50, 3), 20)
    assert thumb.shape == (20, 10, 3) and thumb.dtype == np.uint8


def test_training_panel_follows_a_run_that_is_still_writing(tmp_path):
    run = RunDir(tmp_path / "run")
    run.log_scalars(0, {"loss": 1.0})
    content = ViewerContent("run", run_dir=run.path)
    config = ViewerConfig(port=0, poll_s=0.05)
    with ViewerServer(content, config) as viewer:
        panel = viewer.training
        assert set(panel.charts) == {"loss"}
        for step in range(1, 5):
            run.log_scalars(step, {"loss": 1.0 / (step + 1), "psnr": 10.0 + step})
        assert _wait_until(lambda: "psnr" in panel.charts and len(panel.charts["loss"].data[0]) == 5)
        np.testing.assert_allclose(panel.charts["psnr"].data[1], [11, 12, 13, 14])
        run.save_metrics({"psnr": 14.0})
        assert _wait_until(lambda: panel.metrics.visible and "14" in panel.metrics.content)
        assert "step 4" in panel.status.content
    run.close()
    assert not _viewer_threads()


def test_extra_panels_from_adapters_are_built_and_closed():
    closed = []

    class Panel:
        def __init__(self, server, root):
            self.checkbox = server.gui.add_checkbox("Adapter option", initial_value=True)

        def close(self):
            closed.append(True)

    with ViewerServer(ViewerContent("x", extra_panels=[Panel]), ViewerConfig(port=0)) as viewer:
        panel = next(p for p in viewer.panels if isinstance(p, Panel))
        assert panel.checkbox.value is True
    assert closed == [True]


def test_frustum_panel_needs_no_renderer(tmp_path):
    splits = make_multiview_dataset(make_world(1), 3, 0, 0, 16, 16)
    content = ViewerContent("cams", dataset=splits["train"])
    with ViewerServer(content, ViewerConfig(port=0)) as viewer:
        assert isinstance(viewer.frustums, CameraFrustums) and len(viewer.frustums.handles) == 3
        assert viewer.scene is None


def _glimpse_panel(viewer):
    from viewer.panels.glimpse import GlimpsePanel

    return next(p for p in viewer.panels if isinstance(p, GlimpsePanel))


# a real browser ----------------------------------------------------------------------------------------
SHOTS = Path(__file__).resolve().parents[1] / "outputs" / "viewer"


def _browser():
    from lab.browser import HeadlessBrowser, find_chromium

    if find_chromium() is None:
        message = "chromium is not installed (Debian: apt-get install chromium; `make test` installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run the browser tests, never skip them silently
        pytest.skip(message)
    return HeadlessBrowser(1280, 860)


def _close_notifications(browser) -> None:
    browser.evaluate("document.querySelectorAll('.mantine-Notification-closeButton').forEach(b => b.click())")
    time.sleep(0.5)


def _grey(image: np.ndarray) -> np.ndarray:
    return image[..., :3].astype(np.float64).mean(-1)


@pytest.mark.slow
def test_browser_shows_the_rendered_scene_frustums_and_panels(synthetic_content):
    config = ViewerConfig(port=0)
    config.render.max_side = 640
    with ViewerServer(synthetic_content, config) as viewer, _browser() as browser:
        browser.goto(viewer.url)

        def full_frame_shown():
            return any(r.frames_shown["full"] for r in viewer.scene.renderers)

        browser.wait_for(("Scene", "Buffer", "Cameras", "12 views"), min_std=5, timeout=120,
                         predicate=full_frame_shown)
        _close_notifications(browser)
        rgb_shot = browser.wait_for(min_std=5)
        dom = browser.dom()
        assert "<canvas" in dom and "Scene" in dom and "Cameras" in dom
        # The server-rendered background really is what the browser shows: the screenshot, away from
        # the GUI panel, correlates with the frame rendered for this browser's camera.
        frame = viewer.scene.renderers[0].last_frame.to_uint8()
        h, w = rgb_shot.shape[:2]
        frame_up = np.asarray(torch.nn.functional.interpolate(
            torch.from_numpy(_grey(frame))[None, None], size=(h, w), mode="bilinear")[0, 0])
        region = (slice(h // 4, 3 * h // 4), slice(w // 4, 2 * w // 3))
        corr = np.corrcoef(_grey(rgb_shot)[region].ravel(), frame_up[region].ravel())[0, 1]
        assert corr > 0.8, corr
        assert rgb_shot[region].std() > 10  # not blank
        viewer.scene.buffer.value = "depth"  # what the dropdown does
        depth_shot = browser.wait_for(("depth:",), timeout=60)
        assert np.abs(_grey(depth_shot)[region] - _grey(rgb_shot)[region]).mean() > 10
        SHOTS.mkdir(parents=True, exist_ok=True)
        iio.imwrite(SHOTS / "viewer_scene.png", rgb_shot)
        iio.imwrite(SHOTS / "viewer_depth.png", depth_shot)
        _click_a_frustum_and_check_the_jump(viewer, browser, synthetic_content.dataset.cameras)


def _click_a_frustum_and_check_the_jump(viewer, browser, cams: Cameras) -> None:
    """Click (real mouse events) on the nearest frustum image in view; the browser camera moves onto it."""
    client = next(iter(viewer.server.get_clients().values()))
    camera = client.camera
    seen_from = view_to_cameras(ViewState.from_handle(camera), camera.image_width, camera.image_height)
    uv, z = seen_from.project(cams.centers + cams.forward * 0.9 * viewer.frustums.handles[0].scale)
    uv, z = uv[0], z[0]
    clickable = (z > 0) & (uv[:, 0] > 20) & (uv[:, 0] < 900) & (uv[:, 1] > 20) & (uv[:, 1] < camera.image_height - 20)
    assert clickable.any()
    i = int(torch.where(clickable, z, torch.inf).argmin())
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        browser.call("Input.dispatchMouseEvent", type=kind, x=float(uv[i, 0]), y=float(uv[i, 1]), button="left",
                     clickCount=1)
    assert _wait_until(lambda: f"(view {i})" in viewer.frustums.caption.content, timeout=30)
    assert _wait_until(lambda: np.allclose(client.camera.position, cams.centers[i].numpy(), atol=1e-4))
    browser.wait_for((f"train_{i:04d}",), timeout=30)  # the panel shows the clicked view


@pytest.mark.slow
def test_browser_shows_live_training_curves(tmp_path):
    run = RunDir(tmp_path / "fields" / "demo_run")
    for step in range(0, 200, 5):
        run.log_scalars(step, {"train/loss": 0.5 * math.exp(-step / 60) + 0.01,
                               "eval/psnr": 14 + 10 * (1 - math.exp(-step / 70))})
    run.save_metrics({"psnr": 23.1, "ssim": 0.81})
    with ViewerServer(open_input(run.path), ViewerConfig(port=0, poll_s=0.2)) as viewer, _browser() as browser:
        browser.goto(viewer.url)
        browser.wait_for(("Training", "train/loss", "eval/psnr", "step 195", "ssim"), min_std=5, timeout=120)
        for step in range(200, 260, 5):  # the run goes on: the page follows
            run.log_scalars(step, {"train/loss": 0.5 * math.exp(-step / 60) + 0.01})
        run.close()
        browser.wait_for(("step 255",), timeout=60)
        _close_notifications(browser)
        shot = browser.wait_for()
        assert shot.std() > 10
        SHOTS.mkdir(parents=True, exist_ok=True)
        iio.imwrite(SHOTS / "viewer_training.png", shot)


def test_open_inputs_makes_one_scene_per_path_switched_in_the_gui(tmp_path):
    write_world_dataset(WorldDatasetConfig(out=tmp_path / "world", seed=2, n_train=4, n_val=1, n_test=1, width=16,
                                           height=16), progress=False)
    run = RunDir(tmp_path / "runs" / "r")
    run.log_scalars(0, {"loss": 1.0})
    run.close()
    world, curves = open_inputs([tmp_path / "world", run.path])
    assert world.dataset is not None and world.source is not None and curves.run_dir == run.path
    assert curves.source is None and "holds no checkpoint" in curves.note  # said in its panel
    # the overview camera looks at the scene centre from behind the first training camera
    centre = torch.tensor(world.center)
    to_centre = torch.nn.functional.normalize(centre - world.home.centers[0], dim=0)
    torch.testing.assert_close(world.home.forward[0], to_centre, atol=1e-5, rtol=0)
    with pytest.raises(DataError, match="at least one"):
        open_inputs([])
    with ViewerServer([world, curves], ViewerConfig(port=0)) as viewer:
        assert viewer.current == 0 and viewer.scene.source is world.source and viewer.frustums is not None
        roots = [parts.frame for parts in viewer.scene_parts]
        assert roots[0].visible and not roots[1].visible
        viewer.scene_switch.value = "run r"  # the GUI dropdown
        assert _wait_until(lambda: viewer.current == 1)
        assert viewer.scene.source is None and not viewer.scene.folder.visible
        assert viewer.frustums is None and viewer.training is not None
        assert not roots[0].visible and roots[1].visible and viewer.scene_parts[1].folder.visible
        viewer.show_scene(0)
        assert viewer.scene.source is world.source and viewer.scene.folder.visible


def test_a_dataset_and_a_model_open_on_the_model(tmp_path):
    from scene3d.fields import build_field
    from scene3d.fields.base import field_spec

    write_world_dataset(WorldDatasetConfig(out=tmp_path / "world", seed=2, n_train=4, n_val=1, n_test=1, width=16,
                                           height=16), progress=False)
    field = build_field("grid", aabb=(-1.5, -1.5, -0.05, 1.5, 1.5, 1.0))
    run = RunDir(tmp_path / "run")
    run.save_checkpoint(10, {"field": field.state_dict()}, {**field_spec(field), "fit": {"n_samples": 16}})
    scenes = open_inputs([tmp_path / "world", run.path])
    with ViewerServer(scenes, ViewerConfig(port=0)) as viewer:
        assert viewer.current == 1 and viewer.scene.source is scenes[1].source  # the model, not the ground truth
        assert list(viewer.scene_switch.options) == ["dataset world", "run run"]


def test_demo_stage_checks_the_viewer_on_the_demo_outputs(tmp_path):
    write_world_dataset(WorldDatasetConfig(out=tmp_path / "world", seed=0, n_train=4, n_val=1, n_test=1, width=24,
                                           height=24), progress=False)
    metrics = run_stage(tmp_path, quick=True)
    assert metrics["page_bytes"] > 1000 and metrics["render_psnr_vs_train_image"]["dataset world"] > 40  # exact vs PNG
    with pytest.raises(DataError, match="no world dataset"):
        run_stage(tmp_path / "nothing", quick=True)


def test_view_script_prints_the_url_serves_and_stops_on_ctrl_c():
    root = Path(__file__).resolve().parents[1]
    # a shell without job control starts background jobs with SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored: give the viewer the default disposition a terminal would
    proc = subprocess.Popen([sys.executable, str(root / "scripts/view.py"), "synthetic:1", "--port", "0"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("viewer for synthetic world 1: "):
                url = line.split(": ", 1)[1].strip()
                break
        assert url and url.startswith("http://127.0.0.1:")
        assert urllib.request.urlopen(url, timeout=10).status == 200  # noqa: S310
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_view_script_bad_path_is_one_line_and_exit_code_2(tmp_path):
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "scripts/view.py"), str(tmp_path / "nope.ply")], cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {tmp_path / 'nope.ply'}: does not exist"


def test_bench_reports_preview_and_full_frames():
    from lab.bench.viewer import BenchConfig, run_bench

    config = BenchConfig(repeats=1)
    config.settings.max_side = 64
    result = run_bench(config)
    assert (result["full"]["width"], result["full"]["height"]) == (64, 36)
    assert (result["preview"]["width"], result["preview"]["height"]) == (16, 9)
    assert result["full"]["bytes"] > result["preview"]["bytes"] > 0


# glimpses (active vision) ---------------------------------------------------------------------------
def test_glimpse_session_steps_back_and_places_by_hand():
    from avfm.data import precompute_targets
    from avfm.glimpse import Viewpoint, build_policy
    from avfm.model import build_model
    from avfm.teachers import random_vit_teacher
    from viewer.glimpse import GlimpseSession, box_pixels

    torch.manual_seed(0)
    model = build_model("canvit_tiny").eval()
    image = torch.rand(3, 64, 64)
    targets = precompute_targets(random_vit_teacher(), image[None], model.cfg.canvas_grid)[0][0]
    session = GlimpseSession(model, image, targets, "c2f", max_steps=5)
    planned = build_policy("c2f").viewpoints(1, 5)
    first = session.step()
    torch.testing.assert_close(first.viewpoint.center, planned[0].center)
    std = model.standardizer(model.cfg.canvas_grid)
    expected = (model.predict(first.state)[0][0] - (targets - std.patch_mean) / std.patch_scale).pow(2).mean()
    assert first.error == pytest.approx(float(expected.detach()), rel=1e-5)
    second = session.step()
    session.back()
    again = session.step()  # stepping back and forward replays the same policy viewpoint
    torch.testing.assert_close(again.state.canvas, second.state.canvas)
    hand = session.place(0.5, -0.5, 0.25)
    assert box_pixels(hand.viewpoint, 64, 64) == (40, 8, 56, 24)
    assert box_pixels(Viewpoint.full(1), 64, 64) == (0, 0, 64, 64)
    boxes = session.scene_with_boxes()
    assert torch.equal(boxes[40, 8:24], torch.tensor([1.0, 0.1, 0.1]).expand(16, 3))  # the latest box in red
    assert session.canvas_pca(32).shape == session.teacher_pca(32).shape == (32, 32, 3)
    assert len(session.steps) == 3
    while session.step() is not None:  # the policy has 5 viewpoints in all
        pass
    assert len(session.steps) == 5


def test_click_rays_map_to_scene_coordinates():
    from viewer.panels.glimpse import image_point

    eye = np.array([0.0, -3.0, 0.0])
    for y, x in [(0.0, 0.0), (-0.5, 0.5), (0.9, -0.3)]:
        target = np.array([x, 0.0, -y])  # scene y points down the image, world z up
        assert image_point(eye, target - eye) == pytest.approx((y, x))
    assert image_point(eye, np.array([2.0, 3.0, 0.0])) is None  # beside the image
    assert image_point(eye, np.array([1.0, 0.0, 0.0])) is None  # parallel to it


def test_avfm_run_opens_with_a_glimpse_panel(tmp_path):
    import dataclasses

    from avfm.train import TeacherConfig, train
    from lab.demo.avfm import demo_configs

    config, _ = demo_configs(tmp_path, True, "toy")
    config = dataclasses.replace(config, steps=2, run=dataclasses.replace(config.run, checkpoint_every=2),
                                 standardizer_scenes=8,
                                 data=dataclasses.replace(config.data, n_train=8, n_val=4),
                                 teacher=TeacherConfig(name="random_vit"))
    run_dir = Path(train(config)["run_dir"])
    content = open_input(run_dir)
    assert content.run_dir == run_dir and len(content.extra_panels) == 1
    with ViewerServer(content, ViewerConfig(port=0)) as viewer:
        panel = _glimpse_panel(viewer)
        assert len(panel.images) == 4 and panel.pictures.image.shape == (2 * 160 + 6, 3 * 160 + 8, 3)
        panel._do(panel.session.step)
        panel._do(lambda: panel.session.place(0.0, 0.0, 0.5))
        assert "step 2" in panel.status.content and "prediction error" in panel.status.content
        panel.click((0.0, -3.0, 0.0), (0.25, 3.0, 0.5))  # a click ray from the home camera
        assert panel.session.steps[-1].viewpoint.center[0].tolist() == pytest.approx([-0.5, 0.25])
        assert (panel.y.value, panel.x.value) == (-0.5, 0.25)
        panel.load_scene(3)
        assert "step 0" in panel.status.content
        assert content.home.forward[0].tolist() == pytest.approx([0.0, 1.0, 0.0])

    # any image file opens in the same panel, first, centre-cropped square at the run's resolution
    photo = np.zeros((60, 90, 3), np.uint8)
    photo[:, 15:45] = (255, 0, 0)  # the left half of the centre square is red
    iio.imwrite(tmp_path / "photo.png", photo)
    with pytest.raises(DataError, match="give the run directory too"):
        open_inputs([tmp_path / "photo.png"])
    with pytest.raises(DataError, match="missing.jpg: does not exist"):
        open_inputs([run_dir, tmp_path / "missing.jpg"])
    content = open_inputs([run_dir, tmp_path / "photo.png"])
    with ViewerServer(content, ViewerConfig(port=0)) as viewer:
        panel = _glimpse_panel(viewer)
        assert len(panel.images) == 5
        first = panel.images[0]
        half = first.shape[-1] // 2
        assert first[0, :, : half - 1].min() > 0.95 and first[1:].max() < 0.05  # red left half
        assert first[:, :, half + 1 :].max() < 0.05  # black right half
        panel._do(panel.session.step)
        assert "step 1" in panel.status.content
        assert panel.photo_note.visible and "out of its distribution" in panel.photo_note.content
        panel.load_scene(1)  # a held-out synthetic scene: no such note
        assert not panel.photo_note.visible


def test_glimpse_panel_opens_a_published_checkpoint_on_an_image(tmp_path):
    fixture = Path(__file__).parent / "fixtures" / "canvit_reference_tiny_v02"
    iio.imwrite(tmp_path / "photo.png", np.full((50, 80, 3), 200, np.uint8))
    with pytest.raises(DataError, match="needs images"):
        open_inputs([], canvit=fixture)
    with pytest.raises(DataError, match="with --canvit, give image files"):
        open_inputs([tmp_path], canvit=fixture)
    content = open_inputs([tmp_path / "photo.png"], canvit=fixture)
    with ViewerServer(content, ViewerConfig(port=0)) as viewer:
        panel = _glimpse_panel(viewer)
        assert panel.images.shape == (1, 3, 64, 64)  # the checkpoint's scene resolution
        assert panel.session.prediction_pca(32) is None
        panel._do(panel.session.step)
        step = panel.session.steps[-1]
        assert step.prediction.shape == (64, 48) and step.error is None
        assert panel.session.prediction_pca(32).shape == (32, 32, 3)
        assert "step 1" in panel.status.content


@pytest.mark.slow
def test_browser_shows_the_glimpse_panel(tmp_path):
    import dataclasses

    from avfm.train import TeacherConfig, train
    from lab.demo.avfm import demo_configs

    config, _ = demo_configs(tmp_path, True, "toy")
    config = dataclasses.replace(config, steps=2, run=dataclasses.replace(config.run, checkpoint_every=2),
                                 standardizer_scenes=8,
                                 data=dataclasses.replace(config.data, n_train=8, n_val=4),
                                 teacher=TeacherConfig(name="random_vit"))
    content = open_input(train(config)["run_dir"])
    with ViewerServer(content, ViewerConfig(port=0)) as viewer, _browser() as browser:
        panel = _glimpse_panel(viewer)
        for _ in range(2):
            panel._do(panel.session.step)
        viewer.training.folder.expand_by_default = False
        browser.goto(viewer.url)
        browser.wait_for(("Glimpses", "Policy", "Place glimpse", "step 2", "canvas PCA"), min_std=5, timeout=120)
        _close_notifications(browser)
        # click on the scene image in the 3D view, at scene point (y, x) = (-0.5, 0.5): world (0.5, 0, 0.5)
        client = next(iter(viewer.server.get_clients().values()))
        camera = client.camera
        seen_from = view_to_cameras(ViewState.from_handle(camera), camera.image_width, camera.image_height)
        uv = seen_from.project(torch.tensor([[0.5, 0.0, 0.5]]))[0][0, 0]
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            browser.call("Input.dispatchMouseEvent", type=kind, x=float(uv[0]), y=float(uv[1]), button="left",
                         clickCount=1)
        assert _wait_until(lambda: len(panel.session.steps) == 3, timeout=30)
        center = panel.session.steps[-1].viewpoint.center[0]
        torch.testing.assert_close(center, torch.tensor([-0.5, 0.5]), atol=0.03, rtol=0)
        browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=5.0, y=5.0)  # end the hover highlight
        shot = browser.wait_for(("step 3",), min_std=5)
        SHOTS.mkdir(parents=True, exist_ok=True)
        iio.imwrite(SHOTS / "viewer_glimpses.png", shot)


def _click_text(browser, text: str, tag: str = "*") -> bool:
    """Click (a DOM click, as a user's) the innermost visible element whose text is exactly `text`."""
    return bool(browser.evaluate(f"""(() => {{
        const hits = [...document.querySelectorAll({json.dumps(tag)})].filter(
            e => e.innerText && e.innerText.trim() === {json.dumps(text)} && e.offsetParent !== null);
        if (!hits.length) return false;
        hits[hits.length - 1].scrollIntoView({{block: "center"}});
        hits[hits.length - 1].click();
        return true; }})()"""))


def _drag(browser, x0: float, y0: float, dx: float, steps: int = 12) -> None:
    """A left-button mouse drag on the 3D view (what orbiting is)."""
    browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x0, y=y0)
    browser.call("Input.dispatchMouseEvent", type="mousePressed", x=x0, y=y0, button="left", buttons=1, clickCount=1)
    for k in range(1, steps + 1):
        browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x0 + dx * k / steps, y=y0, button="left",
                     buttons=1)
        time.sleep(0.03)
    browser.call("Input.dispatchMouseEvent", type="mouseReleased", x=x0 + dx, y=y0, button="left", buttons=0,
                 clickCount=1)


def _at_rest(client, timeout: float = 30) -> np.ndarray:
    """The browser camera's position once it has stopped moving (camera controls ease in and out)."""
    deadline, last = time.monotonic() + timeout, client.camera.position.copy()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = client.camera.position.copy()
        if np.allclose(now, last, atol=1e-4):
            return now
        last = now
    raise TimeoutError("the browser camera kept moving")


def _orange_pixels(shot: np.ndarray) -> int:
    rgb = shot[..., :3].astype(int)
    return int(((np.abs(rgb[..., 0] - 240) < 45) & (np.abs(rgb[..., 1] - 130) < 45) & (rgb[..., 2] < 90)).sum())


@pytest.mark.slow
def test_browser_switches_scenes_orbits_about_the_up_axis_and_renders_a_camera_path(tmp_path):
    from viewer.render_path import render_cameras

    scenes = [open_input("synthetic:0"), open_input("synthetic:3")]
    config = ViewerConfig(port=0, export_dir=tmp_path, up="+z")
    config.render.max_side, config.render.settle_s = 320, 0.1
    with ViewerServer(scenes, config) as viewer, _browser() as browser:
        browser.goto(viewer.url)

        def full_frames() -> int:
            return sum(r.frames_shown["full"] for r in viewer.scene.renderers)

        browser.wait_for(("Scenes", "Camera path", "World"), min_std=5, timeout=120, predicate=lambda: full_frames())
        _close_notifications(browser)
        client = next(iter(viewer.server.get_clients().values()))
        renderer = viewer.scene.renderers[0]
        first = browser.wait_for(min_std=5)
        h, w = first.shape[:2]
        region = (slice(h // 4, 3 * h // 4), slice(w // 6, w // 2))

        def matches_last_frame(shot: np.ndarray) -> float:
            frame = torch.from_numpy(_grey(renderer.last_frame.to_uint8()))[None, None]
            up = np.asarray(torch.nn.functional.interpolate(frame, size=(h, w), mode="bilinear")[0, 0])
            return float(np.corrcoef(_grey(shot)[region].ravel(), up[region].ravel())[0, 1])

        # 1. scene switch (what the dropdown does): the picture becomes the other world's render
        shown = full_frames()
        viewer.scene_switch.value = "synthetic world 3"
        assert _wait_until(lambda: full_frames() > shown and viewer.scene.source is scenes[1].source, timeout=60)
        second = browser.wait_for(min_std=5)
        assert matches_last_frame(second) > 0.8
        assert np.abs(_grey(second)[region] - _grey(first)[region]).mean() > 5  # another world

        # 2. up axis: a horizontal drag orbits about the world's up, for +z and after switching to +x
        for label, axis in (("+z", 2), ("+x", 0)):
            viewer.world.dropdown.value = label
            up = np.eye(3)[axis]
            assert _wait_until(lambda up=up: np.allclose(client.camera.up_direction, up, atol=1e-3), timeout=30)
            before = _at_rest(client)
            _drag(browser, w * 0.3, h * 0.5, -150)
            after = _at_rest(client)
            assert np.linalg.norm(after - before) > 0.3
            assert abs(float((after - before) @ up)) < 0.02 * np.linalg.norm(after - before), (label, before, after)

        # 3. keyframes from the browser: the "Add current view" button, twice, from two views
        viewer.world.dropdown.value = "+z"
        assert _click_text(browser, "Camera path")
        browser.wait_for(("Add current view",))
        assert _click_text(browser, "Add current view", "button")
        assert _wait_until(lambda: len(viewer.paths.keyframes) == 1, timeout=30)
        _drag(browser, w * 0.3, h * 0.5, 200)
        _at_rest(client)
        assert _click_text(browser, "Add current view", "button")
        assert _wait_until(lambda: len(viewer.paths.keyframes) == 2, timeout=30)

        # 4. render the path to MP4 from the browser: its frames are the renders of the path's cameras
        panel = viewer.paths
        panel.seconds.value, panel.fps.value, panel.width.value, panel.height.value = 0.5, 8, 64, 48
        assert _click_text(browser, "Render video (.mp4)", "button")
        assert _wait_until(lambda: "wrote" in panel.status.content, timeout=120), panel.status.content
        video = torch.from_numpy(iio.imread(tmp_path / "camera_path.mp4")).float() / 255
        expected = render_cameras(scenes[1].source, panel.path().cameras(), "rgb", progress=False)
        assert video.shape == expected.shape == (4, 48, 64, 3)
        assert float(psnr(video, expected)) > 25

        # the path is drawn (orange keyframe frustums and line): seen from above, then cleared from the GUI
        with client.atomic():
            client.camera.position, client.camera.look_at = (0.0, -0.01, 22.0), (0.0, 0.0, 0.0)
        _at_rest(client)
        with_path = browser.wait_for(min_std=5)
        assert _click_text(browser, "Clear keyframes", "button")
        without = browser.wait_for(("no keyframes",), min_std=5)
        assert _orange_pixels(with_path) > _orange_pixels(without) + 30
        SHOTS.mkdir(parents=True, exist_ok=True)
        iio.imwrite(SHOTS / "viewer_camera_path.png", with_path)


# Gaussian scenes -------------------------------------------------------------------------------------
def test_ply_opens_rasterized_server_side_and_as_native_splats(tmp_path):
    from scene3d.gaussians import GaussianScene, rasterize
    from scene3d.gaussians.ply import write_ply
    from viewer.adapters.gaussians import SplatPanel, splat_arrays

    torch.manual_seed(0)
    scene = GaussianScene.random(300, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]]), sh_degree=1)
    write_ply(tmp_path / "s.ply", scene)
    content = open_input(tmp_path / "s.ply")
    view = cameras_to_view(content.home)
    with torch.no_grad():
        truth = rasterize(content.source.scene, view_to_cameras(view, 48, 36), background=torch.ones(3))
    frame = render_view(content.source, view, "rgb", 48)
    torch.testing.assert_close(frame.image, truth.colors[0].clamp(0, 1), atol=1e-5, rtol=0)
    assert 0.05 < float(truth.alpha[0].mean()) < 1  # the home camera sees the scene, not all of it
    depth = render_view(content.source, view, "depth", 48)
    solid = truth.alpha[0] > 0.5
    torch.testing.assert_close(depth.depth[solid], truth.depth[0][solid])
    arrays = splat_arrays(scene)
    cov = torch.from_numpy(arrays["covariances"]).double()
    rot = torch.from_numpy(np.stack([quat_to_matrix(q) for q in scene.quats.detach().numpy()]))
    expected = rot @ torch.diag_embed(scene.scales.detach().double() ** 2) @ rot.transpose(1, 2)
    torch.testing.assert_close(cov, expected, atol=1e-6, rtol=1e-4)
    assert content.source.buffers[0] == "splats"  # drawn by the browser by default
    with ViewerServer(content, ViewerConfig(port=0)) as viewer:
        panel = next(p for p in viewer.panels if isinstance(p, SplatPanel))
        assert panel.handle.visible and viewer.scene.render(view, True) is None  # nothing rendered on the server
        viewer.scene.buffer.value = "depth"  # a server buffer: the splats step aside
        assert _wait_until(lambda: not panel.handle.visible)
        assert viewer.scene.render(view, True) is not None


def test_gaussian_run_directory_shows_its_latest_checkpoint(tmp_path):
    from scene3d.gaussians import GaussianScene

    scene = GaussianScene.random(50, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]]), sh_degree=0)
    run = RunDir(tmp_path / "gs")
    run.save_checkpoint(5, {"scene": {k: v.detach() for k, v in scene.params.items()}})
    content = open_input(run.path)
    source = content.source
    assert source is not None and len(source.scene) == 50
    assert source.buffers == ("rgb", "splats", "depth", "accumulation")  # training: the server follows it
    view = cameras_to_view(orbit_cameras(1, 4.0, width=32, height=24))
    before = render_view(source, view, "rgb", 32).image
    bigger = GaussianScene.random(80, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]]), sh_degree=0,
                                  generator=torch.Generator().manual_seed(1))
    run.save_checkpoint(9, {"scene": {k: v.detach() for k, v in bigger.params.items()}})
    assert len(source.scene) == 50  # not yet: the newest checkpoint is looked for every two seconds
    source.follower.checked_at -= 10
    after = render_view(source, view, "rgb", 32).image
    assert len(source.scene) == 80 and source.follower.checkpoint.name == "step_0000009.safetensors"
    assert not torch.equal(after, before)


# radiance fields ---------------------------------------------------------------------------------------
def test_field_run_renders_its_checkpoint_and_follows_newer_ones(tmp_path):
    from scene3d.fields import build_field
    from scene3d.fields.base import field_spec
    from scene3d.render import render_image

    field = build_field("grid", aabb=(-1.5, -1.5, -0.05, 1.5, 1.5, 1.0))
    run = RunDir(tmp_path / "run")
    run.save_checkpoint(10, {"field": field.state_dict()}, {**field_spec(field), "fit": {"n_samples": 16}})
    content = open_input(run.path)
    source = content.source
    assert source is not None and source.buffers == ("rgb", "depth", "accumulation")
    view = cameras_to_view(orbit_cameras(1, 4.0, width=32, height=24))
    truth = render_image(field, view_to_cameras(view, 32, 24), 16, background=torch.ones(3))
    frame = render_view(source, view, "rgb", 32)
    torch.testing.assert_close(frame.image, truth["rgb"][0].clamp(0, 1))
    assert render_view(source, view, "accumulation", 32).image.shape == (24, 32, 3)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.5)
    run.save_checkpoint(20, {"field": field.state_dict()}, {**field_spec(field), "fit": {"n_samples": 16}})
    source.follower.checked_at -= 10  # as if the reload interval had passed
    assert not torch.equal(render_view(source, view, "rgb", 32).image, frame.image)
    assert source.follower.checkpoint.name == "step_0000020.safetensors"
