"""The viewer's part of `make demo`: open the demo's outputs, check them end to end, and serve.

`run_stage(out_dir, quick)` opens the world dataset (`out_dir/world`) together with the newest
run directory under `out_dir`, starts the server, fetches the page, renders a training camera's
view server-side and compares it with that training image (PSNR), and in full mode takes headless
browser screenshots (when chromium is installed). `serve_demo` then serves until Ctrl-C.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import imageio.v3 as iio

from lab.browser import HeadlessBrowser, find_chromium
from scene3d.errors import DataError
from scene3d.metrics import psnr
from viewer.camera import cameras_to_view
from viewer.content import ViewerContent
from viewer.inputs import open_inputs
from viewer.server import ViewerConfig, ViewerServer
from viewer.sources import render_view


def demo_inputs(out_dir: Path) -> list[Path]:
    """The demo's world dataset and its newest run directory (one with a scalars.jsonl), if any."""
    inputs = [out_dir / "world"] if (out_dir / "world").is_dir() else []
    runs = sorted((p.parent for p in out_dir.rglob("scalars.jsonl")), key=lambda p: p.stat().st_mtime)
    inputs += runs[-1:]
    if not inputs:
        raise DataError(out_dir, None, "no world dataset or run directory to view (run the earlier demo stages)")
    return inputs


def screenshot(content: ViewerContent | list[ViewerContent], path: Path, words: tuple[str, ...], max_side: int = 640,
               timeout: float = 120) -> Path:
    """Serve `content`, load it in headless chromium, wait for `words` and a drawn canvas, save a PNG."""
    config = ViewerConfig(port=0)
    config.render.max_side = max_side
    with ViewerServer(content, config) as viewer, HeadlessBrowser(1280, 860) as browser:
        browser.goto(viewer.url)
        scene = viewer.scene
        browser.wait_for(words, min_std=5, timeout=timeout,
                         predicate=None if scene is None else
                         lambda: any(r.frames_shown["full"] for r in scene.renderers))
        browser.evaluate("document.querySelectorAll('.mantine-Notification-closeButton').forEach(b => b.click())")
        path.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(path, browser.wait_for(min_std=5))
    return path


def run_stage(out_dir: Path, quick: bool) -> dict:
    """Check the viewer on the demo's outputs; full mode also writes browser screenshots."""
    inputs = demo_inputs(Path(out_dir))
    scenes = open_inputs(inputs)
    metrics: dict = {"inputs": [str(t) for t in inputs], "scenes": [s.title for s in scenes]}
    with ViewerServer(scenes, ViewerConfig(port=0)) as viewer:
        page = urllib.request.urlopen(viewer.url, timeout=30).read()  # noqa: S310 (our loopback server)
        metrics["page_bytes"] = len(page)
    dataset = next((s.dataset for s in scenes if s.dataset is not None), None)
    if dataset is not None:  # every renderable scene from the dataset's first training camera
        view = cameras_to_view(dataset.cameras, 0)
        for scene in (s for s in scenes if s.source is not None and "rgb" in s.source.buffers):
            start = time.perf_counter()
            frame = render_view(scene.source, view, "rgb", max(dataset.width, dataset.height))
            metrics.setdefault("render_seconds", {})[scene.title] = round(time.perf_counter() - start, 3)
            metrics.setdefault("render_psnr_vs_train_image", {})[scene.title] = round(
                float(psnr(frame.image, dataset.images[0])), 2)
    if not quick and find_chromium() is not None:
        shots = [screenshot(scenes, Path(out_dir) / "viewer" / "viewer_scene.png", ("Scene",))]
        run = next((s for s in scenes if s.run_dir is not None), None)
        if run is not None:
            run_only = ViewerContent(run.title, run_dir=run.run_dir)
            shots.append(screenshot(run_only, Path(out_dir) / "viewer" / "viewer_training.png", ("Training",)))
        metrics["screenshots"] = [str(s) for s in shots]
    return metrics


def serve_demo(out_dir: Path, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the demo's outputs until interrupted (the last step of `make demo`)."""
    scenes = open_inputs(demo_inputs(Path(out_dir)))
    with ViewerServer(scenes, ViewerConfig(host, port)) as viewer:
        print(f"viewer for {' + '.join(s.title for s in scenes)}: {viewer.url} (Ctrl-C to stop)", flush=True)
        try:
            viewer.serve_forever()
        except KeyboardInterrupt:
            print("viewer stopped", flush=True)
