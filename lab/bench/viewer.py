"""Viewer benchmarks, each side by side in one run.

`run_bench`: what the progressive scheme buys: time and bytes of a preview frame versus a full frame
(render + JPEG encode) on one view of a synthetic world.

`run_splat_bench`: a large Gaussian PLY (a synthetic world splatted from its rendered depth, 300k
Gaussians by default) opened in headless Chromium: seconds from opening the file to the first sharp
frame on screen, browser-drawn splats (the default) against server rasterization at 384 px (the
viewer's default before); and the browser's frame rate while the camera orbits. Chromium draws with
its software WebGL (SwiftShader) here: a GPU browser is faster still."""

from __future__ import annotations

import dataclasses
import io
import statistics
import time
from dataclasses import dataclass, field
from typing import Annotated

import imageio.v3 as iio
import numpy as np
import torch

from scene3d.config import Range, check
from scene3d.data.synthetic import make_world
from viewer.camera import cameras_to_view
from viewer.inputs import open_synthetic
from viewer.panels.scene import RenderSettings
from viewer.sources import SyntheticSource, render_view


@dataclass
class BenchConfig:
    seed: int = 0
    aspect: Annotated[float, Range(0.01, 100)] = 16 / 9  # a typical browser canvas
    repeats: Annotated[int, Range(1)] = 3
    settings: RenderSettings = field(default_factory=RenderSettings)

    def __post_init__(self) -> None:
        check(self)


def _jpeg_bytes(image, quality: int) -> int:
    buffer = io.BytesIO()
    iio.imwrite(buffer, image, extension=".jpeg", quality=quality)
    return buffer.tell()


def _measure(source, view, side: int, quality: int, repeats: int) -> dict:
    seconds, size = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        frame = render_view(source, view, "rgb", side)
        size = _jpeg_bytes(frame.to_uint8(), quality)
        seconds.append(time.perf_counter() - start)
    h, w = frame.image.shape[:2]
    return {"width": w, "height": h, "jpeg_quality": quality, "seconds": statistics.median(seconds), "bytes": size}


def run_bench(config: BenchConfig) -> dict:
    home = open_synthetic(f"synthetic:{config.seed}").home
    view = cameras_to_view(home)
    view = dataclasses.replace(view, aspect=config.aspect)
    source = SyntheticSource(make_world(config.seed))
    s = config.settings
    full = _measure(source, view, s.max_side, s.full_jpeg, config.repeats)
    preview = _measure(source, view, max(16, round(s.max_side * s.preview_scale)), s.preview_jpeg, config.repeats)
    return {"full": full, "preview": preview,
            "full_over_preview_seconds": full["seconds"] / preview["seconds"],
            "full_over_preview_bytes": full["bytes"] / preview["bytes"]}


# a large Gaussian PLY in the browser ---------------------------------------------------------------------
@dataclass
class SplatBenchConfig:
    gaussians: Annotated[int, Range(1000, 5_000_000)] = 300_000
    seed: int = 0
    server_side: Annotated[int, Range(64, 1024)] = 384  # the server path's frame size (the former default)
    timeout_s: Annotated[float, Range(10, 3600)] = 600

    def __post_init__(self) -> None:
        check(self)


def splat_world(n: int, seed: int = 0):
    """`n` Gaussians on the surfaces of synthetic world `seed`: its rendered depth from 12 orbit views
    back-projected, one flat-ish Gaussian per pixel (a footprint of one pixel), opaque, coloured."""
    from scene3d.cameras import orbit_cameras
    from scene3d.data.synthetic import render_world
    from scene3d.gaussians import GaussianScene

    side = int(np.ceil(np.sqrt(n / 12 / 0.45)))  # about 45% of the pixels hit the world
    cams = orbit_cameras(12, 6.0, elevation_deg=35.0, fov_x_deg=55.0, width=side, height=side, target=(0, 0, 0.2))
    points, colors, scales = [], [], []
    for i in range(len(cams)):
        out = render_world(make_world(seed), cams[i])
        hit = out["mask"][0].reshape(-1)
        uv = cams[i].pixel_centers().reshape(1, -1, 2)
        points.append(cams[i].unproject(uv, out["depth"][0].reshape(1, -1))[0][hit])
        colors.append(out["rgb"][0].reshape(-1, 3)[hit])
        scales.append(out["depth"][0].reshape(-1)[hit] / float(cams.K[i, 0, 0]))
    points, colors, scales = torch.cat(points), torch.cat(colors), torch.cat(scales)
    keep = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))[:n]
    return GaussianScene.from_points(points[keep], colors[keep], sh_degree=0, scale=scales[keep], opacity=0.9)


REGION = (slice(200, 600), slice(200, 800))  # of a 1280x800 screenshot: the scene, away from the GUI panel


def _first_sharp_on_screen(browser, start: float, ready, timeout: float) -> tuple[float, np.ndarray]:
    """Screenshots back to back: the time (since `start`) at which the first of two equal screenshots
    showing a drawn scene (`ready()`, pixel spread in the scene region) was requested. A screenshot of
    software WebGL takes seconds; timing its request, not its return, keeps that out of the number."""
    previous = None
    while time.perf_counter() - start < timeout:
        requested = time.perf_counter() - start
        shot = browser.screenshot() if ready() else None
        drawn = shot is not None and shot[REGION].std() > 25
        if drawn and previous is not None and np.abs(shot[REGION].astype(float) - previous[1][REGION]).mean() < 0.5:
            return previous[0], shot
        previous = (requested, shot) if drawn else None
        if shot is None:
            time.sleep(0.05)
    raise TimeoutError(f"no settled frame within {timeout} s")


def _first_sharp_frame(browser, ply, buffer: str, server_side: int, timeout: float) -> dict:
    """Seconds from opening `ply` (read, server start) to a sharp, settled frame of `buffer` on screen."""
    from viewer.inputs import open_input
    from viewer.server import ViewerConfig, ViewerServer

    browser.goto("about:blank")
    start = time.perf_counter()
    content = open_input(ply)
    config = ViewerConfig(port=0)
    config.render.max_side, config.render.match_canvas = server_side, buffer == "splats"
    sent = None
    with ViewerServer(content, config) as viewer:
        viewer.scene.buffer.value = buffer
        opened = time.perf_counter() - start
        browser.goto(viewer.url)

        def ready() -> bool:  # the server's full frame is sent (the browser draws splats itself)
            nonlocal sent
            if buffer == "splats":
                return bool(viewer.server.get_clients())
            if sent is None and any(r.frames_shown["full"] for r in viewer.scene.renderers):
                sent = time.perf_counter() - start
            return sent is not None

        first, shot = _first_sharp_on_screen(browser, start, ready, timeout)
        fps = browser.evaluate("""new Promise(done => { let n = 0; const t0 = performance.now();
            const tick = () => { n++; if (performance.now() - t0 < 3000) requestAnimationFrame(tick);
                                 else done(n / ((performance.now() - t0) / 1000)); };
            requestAnimationFrame(tick); })""", await_promise=True)
    return {"buffer": buffer, "open_seconds": round(opened, 2), "server_frame_sent_seconds": sent and round(sent, 2),
            "first_sharp_frame_seconds": round(first, 2), "browser_fps_at_rest": round(fps, 2),
            "screenshot_std": float(shot[REGION].std())}


def run_splat_bench(config: SplatBenchConfig, out_dir) -> dict:
    from pathlib import Path

    from lab.browser import HeadlessBrowser
    from scene3d.gaussians.ply import write_ply

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ply = write_ply(out_dir / f"splat_world_{config.gaussians}.ply", splat_world(config.gaussians, config.seed))
    with HeadlessBrowser(1280, 800) as browser:
        browser_drawn = _first_sharp_frame(browser, ply, "splats", config.server_side, config.timeout_s)
        server = _first_sharp_frame(browser, ply, "rgb", config.server_side, config.timeout_s)
    return {"gaussians": config.gaussians, "seed": config.seed, "browser": "headless Chromium, SwiftShader WebGL",
            "splats_browser": browser_drawn, "server_rasterized": server,
            "speedup_first_sharp_frame": server["first_sharp_frame_seconds"]
            / browser_drawn["first_sharp_frame_seconds"]}
