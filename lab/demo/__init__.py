"""`make demo`: the app's main job on the embedded default data, a pipeline of stages.

Each stage is a module of this package with `run_stage(out_dir, quick) -> dict` (its metrics);
`STAGES` orders them (later stages read earlier stages' outputs under `out_dir`), and `run_demo`
runs them and keeps `out_dir/summary.json` up to date after every stage.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from lab.demo import avfm, fields, prior, score, splat_distill, splats, viewer, volume, world
from scene3d.checkpoint import atomic_write_json
from scene3d.config import Range, check
from scene3d.data.formats import read_json_object
from scene3d.errors import Scene3DError

STAGES: list[tuple[str, Callable[[Path, bool], dict]]] = [
    ("world", world.run_stage),  # the default synthetic world as a dataset
    ("fields", fields.run_stage),  # a radiance field fitted to it
    ("volume", volume.run_stage),  # PVD-AL: that field converted into another architecture
    ("splats", splats.run_stage),  # 3D Gaussians fitted to it, PLY and mesh export
    ("avfm", avfm.run_stage),  # CanViT pretraining on synthetic 2D scenes, probes per glimpse
    ("splat_distill", splat_distill.run_stage),  # a 3D-aware 2D student through feed-forward splatting, 3D probes
    ("prior", prior.run_stage),  # the class-conditional diffusion prior for score distillation
    ("score", score.run_stage),  # score distillation of an object into splats (and a field in full mode)
    ("viewer", viewer.run_stage),  # the viewer opens every output (full mode: browser screenshots)
]


@dataclass
class DemoConfig:
    out: Path = Path("outputs/demo")
    quick: bool = False  # CI size: smaller images, fewer views, shorter training
    serve: bool = True  # full mode ends by serving the viewer on the outputs (when run from a terminal)
    port: Annotated[int, Range(0, 65535)] = 8080
    stages: tuple[str, ...] = ()  # run only these stages (default: all), keeping the others' summary

    def __post_init__(self) -> None:
        check(self)


def run_demo(config: DemoConfig) -> dict:
    """Run the selected stages in order; returns the summary written to `out/summary.json`."""
    names = [name for name, _ in STAGES]
    unknown = sorted(set(config.stages) - set(names))
    if unknown:
        raise Scene3DError(f"--stages: unknown {unknown}; the stages are {names}")
    config.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"quick": config.quick, "stages": {}}
    if config.stages and (config.out / "summary.json").is_file():
        summary["stages"] = read_json_object(config.out / "summary.json").get("stages", {})
    for name, stage in STAGES:
        if config.stages and name not in config.stages:
            continue
        start = time.perf_counter()
        print(f"== demo stage: {name}")
        result = stage(config.out, config.quick)
        result["seconds"] = round(time.perf_counter() - start, 2)
        summary["stages"][name] = result
        print(f"   {result}")
        atomic_write_json(config.out / "summary.json", summary)
    print(f"demo finished: {config.out / 'summary.json'}")
    if config.serve and not config.quick and sys.stdin.isatty():
        viewer.serve_demo(config.out, port=config.port)
    return summary
