"""Serve the web viewer for synthetic worlds, dataset folders, run directories or PLY files.

    python scripts/view.py synthetic:0
    python scripts/view.py outputs/worlds/w0 --port 8081
    python scripts/view.py outputs/fields/my_run --host 0.0.0.0   # reachable from other machines
    python scripts/view.py outputs/worlds/w0 outputs/fields/my_run  # two scenes, switched in the GUI
    python scripts/view.py capture/sparse_pc.ply --up=-y          # a COLMAP-frame point cloud, -y up
    python scripts/view.py photo.jpg --canvit ~/weights/canvit-vitb16  # published CanViT weights, glimpses

Prints the URL and serves until interrupted (Ctrl-C).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from scene3d.cli import run_cli
from scene3d.config import Range, check
from viewer.inputs import open_inputs
from viewer.panels.scene import RenderSettings
from viewer.panels.world import UpChoice
from viewer.server import ViewerConfig, ViewerServer


@dataclass
class ViewArgs:
    paths: tyro.conf.Positional[tuple[str, ...]]
    """synthetic:SEED, a dataset folder (transforms*.json), a run directory or a .ply file (one or more)."""
    host: str = "127.0.0.1"
    """Interface to bind; the default is reachable from this machine only."""
    port: Annotated[int, Range(0, 65535)] = 8080
    """Port to listen on (taken: the next free one, said on stderr)."""
    strict_port: bool = False
    """Fail when the port is taken instead of moving to the next free one."""
    up: UpChoice = "auto"
    """The world's up axis, which orbiting turns about (auto: the cameras' mean up where there are cameras, else +z)."""
    export_dir: Path = Path("outputs/viewer")
    """Where the Camera path panel saves paths, videos and exported views."""
    render: RenderSettings = field(default_factory=RenderSettings)
    canvit: Path | None = None
    """A published CanViT checkpoint folder (config.json, model.safetensors): its Glimpses panel on the images given."""

    def __post_init__(self) -> None:
        check(self)


def main(args: ViewArgs) -> None:
    scenes = open_inputs(list(args.paths), canvit=args.canvit)
    config = ViewerConfig(args.host, args.port, args.render, strict_port=args.strict_port, up=args.up,
                          export_dir=args.export_dir)
    with ViewerServer(scenes, config) as viewer:
        print(f"viewer for {' + '.join(s.title for s in scenes)}: {viewer.url}", flush=True)
        viewer.serve_forever()


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(ViewArgs)))
