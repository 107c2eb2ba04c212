"""Render a camera path (nerfstudio's camera-path JSON: the viewer's "Camera path" panel saves one,
so does nerfstudio's viewer) to a video, with the viewer's own renderers.

    python scripts/render_path.py outputs/fields/my_run orbit.json                 # orbit.mp4 beside the path
    python scripts/render_path.py synthetic:0 orbit.json --buffer depth --out depth.mp4
    python scripts/render_path.py scene.ply orbit.json --lossless                    # frames exact (RGB H.264)

SCENE is anything the viewer renders itself: synthetic:SEED, a dataset folder with its world.json, a
run directory (field or Gaussian checkpoints) or a 3DGS .ply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from scene3d.cli import run_cli
from scene3d.data.camera_path import load_camera_path
from scene3d.errors import DataError
from scene3d.viz import write_video
from viewer.inputs import open_input
from viewer.render_path import render_cameras


@dataclass
class RenderPathArgs:
    scene: tyro.conf.Positional[str]
    """synthetic:SEED, a dataset folder with its world.json, a run directory or a 3DGS .ply file."""
    path: tyro.conf.Positional[Path]
    """A camera-path JSON (nerfstudio's format)."""
    out: Path | None = None
    """The video (.mp4, or .gif); default: the path's name with .mp4, beside it."""
    buffer: str = "rgb"
    """Which buffer to render (rgb, depth, normals, labels, accumulation, features: what the scene offers)."""
    lossless: bool = False
    """Lossless RGB H.264: the decoded frames equal the renders exactly (fewer players open it)."""


def main(args: RenderPathArgs) -> Path:
    path = load_camera_path(args.path)
    content = open_input(args.scene)
    if content.source is None:
        raise DataError(args.scene, None, "has nothing rendered here (a mesh or point cloud is drawn by the "
                        "browser only; a run needs a checkpoint)")
    if args.buffer not in content.source.buffers:
        raise DataError(args.scene, "--buffer", f"{args.buffer!r} is not offered (it has "
                        f"{', '.join(content.source.buffers)})")
    frames = render_cameras(content.source, path.cameras(), args.buffer)
    out = write_video(args.out or args.path.with_suffix(".mp4"), frames, path.fps, args.lossless)
    print(f"{len(frames)} frames of {args.buffer} at {path.width}x{path.height}, {path.fps:g} fps: {out}")
    return out


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(RenderPathArgs)))
