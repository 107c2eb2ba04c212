"""One score-distillation run into a registered 3D target: progress bar, TensorBoard, multi-view
renders, a turntable video, PLY (splats) or mesh (fields) export, and (with a classifier) the
recognition of 8 evenly spaced views.

    distill_score(DistillScoreConfig(guidance="vsd", target="splats", distill=DistillConfig(prompt="torus")))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import imageio.v3 as iio
import numpy as np
import torch
import tyro
from einops import rearrange

from scene3d.diffusion import PixelPrior, load_prior
from scene3d.diffusion.base import DiffusionPrior
from scene3d.diffusion.classifier import load_classifier
from scene3d.distill.score.distiller import DistillConfig, ScoreDistiller
from scene3d.distill.score.evaluate import recognition, saturation
from scene3d.distill.score.guidance import GUIDANCES, Guidance, make_guidance
from scene3d.distill.score.targets import TARGETS, TargetOptions, build_target
from scene3d.distill.score.views import turntable_cameras
from scene3d.errors import DataError
from scene3d.runs import RunDir
from scene3d.viz import image_grid, save_png


@dataclass
class ScheduleConfig:
    """Guidance settings shared by the scripts: CFG scale, the annealed upper bound of t, and VSD's
    estimator learning rate. ProlificDreamer trains its LoRA at 1e-4 over tens of thousands of steps;
    runs here are a few hundred steps, and at 1e-4 the estimator barely moves from the prior, so VSD
    degenerates into a pure CFG push (spiky, over-saturated Gaussians). 1e-3 lets it track the renders."""

    guidance_scale: float = 7.5
    t_max: float = 0.98
    t_max_end: float = 0.5
    anneal_fraction: float = 1.0  # t upper bound annealed t_max -> t_max_end over this fraction of the steps
    estimator_lr: float = 1e-3  # VSD only


def make_run_guidance(name: str, prior: DiffusionPrior, schedule: ScheduleConfig, steps: int) -> Guidance:
    extra = {"estimator_lr": schedule.estimator_lr} if name == "vsd" else {}
    return make_guidance(name, prior, guidance_scale=schedule.guidance_scale, t_max=schedule.t_max,
                         t_max_end=schedule.t_max_end, anneal_steps=int(schedule.anneal_fraction * steps), **extra)


@dataclass
class DistillScoreConfig:
    prior: Path = Path("outputs/prior/objects32")
    guidance: str = "sds"  # sds | vsd | ism | tsm (GUIDANCES)
    target: str = "splats"  # field | splats | voxels | image (TARGETS)
    name: str = ""  # default: <prompt>_<guidance>_<target>_s<seed>
    root: Path = Path("outputs")
    classifier: Path | None = Path("outputs/classifier/classifier32")  # skipped when missing
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    targets: TargetOptions = field(default_factory=TargetOptions)
    particles: int = 1  # VSD's particles (1 to 4): independent scenes trained as one guidance batch
    turntable_frames: int = 48
    view_size: int = 64  # resolution of views.png and the turntable (recognition uses render_size)
    export: bool = True  # splats.ply for Gaussians, mesh.ply for fields
    # --prompt, --steps, --batch-size, --render-size, --seed, ... without a prefix
    distill: Annotated[DistillConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=DistillConfig)


def distill_score(config: DistillScoreConfig) -> dict:
    for key, table in (("guidance", GUIDANCES), ("target", TARGETS)):
        if getattr(config, key) not in table:
            raise DataError(None, key, f"'{getattr(config, key)}' is not one of {sorted(table)}")
    d = config.distill
    prior = load_prior(config.prior)
    name = config.name or f"{d.prompt.replace(' ', '-')}_{config.guidance}_{config.target}_s{d.seed}"
    run = RunDir.create("score", name, root=config.root)
    run.save_config(config)
    torch.manual_seed(d.seed)  # the guidance's estimator initialisation: same seed, same run
    guidance = make_run_guidance(config.guidance, prior, config.schedule, d.steps)
    students = [build_target(config.target, d.seed + k, config.targets, guidance=config.guidance)
                for k in range(config.particles)]
    start = time.perf_counter()
    ScoreDistiller(prior, guidance, [s.target for s in students], d).run(run)
    seconds = time.perf_counter() - start
    metrics: dict = {"seconds": round(seconds, 1), "steps_per_second": d.steps / seconds}
    rows, views = [], []
    for k, student in enumerate(students):
        folder = run.path if k == 0 else run.file(f"particle{k}")
        folder.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            views.append(student.render(turntable_cameras(8, d.render_size)))
            big = student.render(turntable_cameras(8, config.view_size))
            high = student.render(turntable_cameras(4, config.view_size, elevation_deg=55.0))
            frames = student.render(turntable_cameras(config.turntable_frames, config.view_size))
        rows += [list(rearrange(x.clamp(0, 1), "v c h w -> v h w c")) for x in (big, high)]
        video = (rearrange(frames, "f c h w -> f h w c").clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        iio.imwrite(folder / "turntable.gif", video, duration=50, loop=0)
        if config.export and student.export is not None:
            exported = student.export(folder)
            metrics.update(exported if k == 0 else {f"particle{k}_{key}": v for key, v in exported.items()})
    save_png(run.file("views.png"), image_grid(rows))
    views = torch.cat(views)
    metrics.update({"saturation": saturation(views), "views_png": str(run.file("views.png")),
                    "turntable": str(run.file("turntable.gif"))})
    if config.classifier is not None and config.classifier.is_dir() and isinstance(prior, PixelPrior):
        classifier, classes = load_classifier(config.classifier)
        metrics["recognition"] = recognition(classifier, views, classes.index(d.prompt))  # all particles' views
    run.save_metrics(metrics)
    run.close()
    return metrics
