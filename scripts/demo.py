"""The app's main job on the embedded default data, stage by stage.

    python scripts/demo.py           # full size (make demo)
    python scripts/demo.py --quick   # the same pipeline at CI size (make demo-quick)
    python scripts/demo.py --stages prior score   # only these (later stages read earlier ones' outputs)

Writes everything under outputs/demo/ (or --out) and a summary.json of every stage's metrics.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from avfm.demo import run_demo_stage as avfm_stage
from avfm.splat_distill import run_demo_stage as splat_distill_stage
from scene3d.checkpoint import atomic_write_json
from scene3d.cli import run_cli
from scene3d.data.formats import read_json_object
from scene3d.data.generate import WorldDatasetConfig, write_world_dataset
from scene3d.diffusion.demo import run_demo_stage as prior_stage
from scene3d.distill.score_demo import run_demo_stage as score_stage
from scene3d.distill.volume_demo import run_demo_stage as volume_stage
from scene3d.errors import Scene3DError
from scene3d.fields.demo import run_demo_stage as fields_stage
from scene3d.gaussians.train import run_demo_stage as splats_stage
from viewer.demo import run_demo_stage as viewer_stage
from viewer.demo import serve_demo


@dataclass
class DemoConfig:
    out: Path = Path("outputs/demo")
    quick: bool = False  # CI size: smaller images, fewer views, shorter training
    serve: bool = True  # full mode ends by serving the viewer on the outputs (when run from a terminal)
    port: int = 8080
    stages: tuple[str, ...] = ()  # run only these stages (default: all), keeping the others' summary


def world_stage(out: Path, quick: bool) -> dict:
    """Stage 1: the default synthetic world as a Blender-layout dataset with a contact sheet."""
    size = 32 if quick else 64
    config = WorldDatasetConfig(out=out / "world", seed=0, n_train=24 if quick else 100, n_val=4 if quick else 8,
                                n_test=6 if quick else 16, width=size, height=size, overwrite=True)
    summary = write_world_dataset(config)
    return {"dataset": str(config.out), "views": summary["views"], "contact_sheet": summary["contact_sheet"]}


STAGES = [
    ("world", world_stage),  # the default synthetic world as a dataset
    ("fields", fields_stage),  # a radiance field fitted to it
    ("volume", volume_stage),  # PVD-AL: that field converted into another architecture
    ("splats", splats_stage),  # 3D Gaussians fitted to it, PLY and mesh export
    ("avfm", avfm_stage),  # CanViT pretraining on synthetic 2D scenes, probes per glimpse
    ("splat_distill", splat_distill_stage),  # a 3D-aware 2D student through feed-forward splatting, 3D probes
    ("prior", prior_stage),  # the class-conditional diffusion prior for score distillation
    ("score", score_stage),  # score distillation of an object into splats (and a field in full mode)
    ("viewer", viewer_stage),  # the viewer opens every output (full mode: browser screenshots)
]


def main(config: DemoConfig) -> None:
    unknown = sorted(set(config.stages) - {name for name, _ in STAGES})
    if unknown:
        raise Scene3DError(f"--stages: unknown {unknown}; the stages are {[name for name, _ in STAGES]}")
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
        serve_demo(config.out, port=config.port)


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(DemoConfig)))
