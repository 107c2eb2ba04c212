"""One score-distillation run into a registered 3D target, driven by `scene3d.train.fit` (progress bar,
TensorBoard, rotating checkpoints and exact resume): multi-view renders, a turntable video, PLY (splats)
or mesh (fields) export, and (with a classifier) the recognition of 8 evenly spaced views.

    distill_score(DistillScoreConfig(guidance="vsd", target="splats", distill=DistillConfig(prompt="torus")))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import tyro
from einops import rearrange

from scene3d.config import Choice, Range, check
from scene3d.diffusion import PixelPrior, load_prior
from scene3d.diffusion.base import LORA_LAYERS, DiffusionPrior
from scene3d.diffusion.classifier import load_classifier
from scene3d.distill.score.distiller import DistillConfig, ScoreDistiller
from scene3d.distill.score.evaluate import recognition, saturation
from scene3d.distill.score.geometry import ShapeCheckConfig, passes_as, shape_report, shape_views
from scene3d.distill.score.guidance import GUIDANCES, Guidance, make_guidance
from scene3d.distill.score.targets import TARGETS, Student, TargetOptions, build_target
from scene3d.distill.score.views import orbit_views
from scene3d.errors import DataError
from scene3d.runs import RunDir
from scene3d.train import FitResult, RunConfig, fit
from scene3d.viz import image_grid, save_png, write_video


@dataclass
class ScheduleConfig:
    """Guidance settings shared by the scripts: CFG scale, the annealed upper bound of t, and VSD's
    estimator (ProlificDreamer's by default: LoRA on attention at lr 1e-4, `VSDConfig`). The option
    `--schedule.estimator-lr 1e-3 --schedule.lora-on all` is the estimator this project used before
    (measured against the default in docs/score.md)."""

    guidance_scale: Annotated[float, Range(0)] = 7.5
    t_max: Annotated[float, Range(0, 1, above=True)] = 0.98
    t_max_end: Annotated[float, Range(0, 1, above=True)] = 0.5
    anneal_fraction: Annotated[float, Range(0, 1)] = 1.0  # t's upper bound annealed over this fraction of the steps
    estimator_lr: Annotated[float, Range(0, above=True)] = 1e-4  # VSD only
    lora_on: Annotated[str, Choice(LORA_LAYERS)] = "attention"  # VSD only


def make_run_guidance(name: str, prior: DiffusionPrior, schedule: ScheduleConfig, steps: int) -> Guidance:
    extra = {"estimator_lr": schedule.estimator_lr, "lora_on": schedule.lora_on} if name == "vsd" else {}
    return make_guidance(name, prior, guidance_scale=schedule.guidance_scale, t_max=schedule.t_max,
                         t_max_end=schedule.t_max_end, anneal_steps=int(schedule.anneal_fraction * steps), **extra)


@dataclass
class DistillScoreConfig:
    """A run in `<output_root>/score/<name>/` (name: `<prompt>_<guidance>_<target>_s<seed>`), resumed from its
    latest checkpoint."""

    prior: Path = Path("outputs/prior/objects32")
    guidance: Annotated[str, Choice(GUIDANCES)] = "sds"  # sds | vsd | ism | tsm (GUIDANCES)
    target: Annotated[str, Choice(TARGETS)] = "splats"  # field | splats | voxels | image (TARGETS)
    classifier: Path | None = Path("outputs/classifier/classifier32")  # skipped when missing
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    targets: TargetOptions = field(default_factory=TargetOptions)
    particles: Annotated[int, Range(1, 4)] = 1  # VSD's particles: independent scenes trained as one guidance batch
    turntable_frames: Annotated[int, Range(1)] = 48
    view_size: Annotated[int, Range(1, 4096)] = 64  # resolution of views.png and the turntable
    export: bool = True  # splats.ply for Gaussians, mesh.ply for fields
    shape_check: bool = True  # geometry.shape_report of the first particle: nearest primitive, tunnels
    shape: ShapeCheckConfig = field(default_factory=ShapeCheckConfig)
    # --prompt, --steps, --batch-size, --render-size, --seed, ... without a prefix
    distill: Annotated[DistillConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=DistillConfig)
    # --name, --output-root, --checkpoint-every, --log-every, --resume, ... (scene3d.train.RunConfig)
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: RunConfig(log_every=10, eval_every=0, checkpoint_every=100))

    def __post_init__(self) -> None:
        check(self)

    @property
    def run_name(self) -> str:
        d = self.distill
        return self.run.name or f"{d.prompt.replace(' ', '-')}_{self.guidance}_{self.target}_s{d.seed}"


class ScoreRun(ScoreDistiller):
    """The distiller of a `distill_score` run: `finish` renders the students and writes the outputs."""

    def __init__(self, config: DistillScoreConfig, prior: DiffusionPrior, guidance: Guidance, students: list[Student]):
        super().__init__(prior, guidance, [s.target for s in students], config.distill)
        self.run_config, self.students = config, students
        self.started = time.perf_counter()  # this invocation's wall clock

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        """Saturation (and recognition, with a classifier) of 8 views per particle, the shape check of
        the first particle (`geometry.shape_report`, `passes_as` the prompt); with a run folder,
        `views.png` (8 views and 4 high views per particle), a turntable and the export per particle
        (particle k > 0 in `particle<k>/`)."""
        config, d = self.run_config, self.run_config.distill
        seconds = time.perf_counter() - self.started
        metrics: dict[str, Any] = {"seconds": round(seconds, 1), "steps_per_second": result.steps_this_run / seconds}
        rows, views = [], []
        for k, student in enumerate(self.students):
            with torch.no_grad():
                views.append(student.render(orbit_views(8, d.render_size)))
                if run is None:
                    continue
                big = student.render(orbit_views(8, config.view_size))
                high = student.render(orbit_views(4, config.view_size, elevation_deg=55.0))
                frames = student.render(orbit_views(config.turntable_frames, config.view_size))
            rows += [list(rearrange(x.clamp(0, 1), "v c h w -> v h w c")) for x in (big, high)]
            folder = run.path if k == 0 else run.file(f"particle{k}")
            folder.mkdir(parents=True, exist_ok=True)
            write_video(folder / "turntable.gif", rearrange(frames, "f c h w -> f h w c"), fps=20)
            if config.export and student.export is not None:
                exported = student.export(folder)
                metrics.update(exported if k == 0 else {f"particle{k}_{key}": v for key, v in exported.items()})
        views = torch.cat(views)
        metrics["saturation"] = saturation(views)
        student = self.students[0]
        if config.shape_check and student.surface is not None:
            cameras = shape_views(config.shape)
            metrics["shape"] = shape_report(cameras, *student.surface(cameras), config.shape, seed=d.seed)
            metrics["shape_pass"] = passes_as(metrics["shape"], d.prompt)
        if run is not None:
            save_png(run.file("views.png"), image_grid(rows))
            metrics.update({"views_png": str(run.file("views.png")), "turntable": str(run.file("turntable.gif"))})
        if config.classifier is not None and config.classifier.is_dir() and isinstance(self.prior, PixelPrior):
            classifier, classes = load_classifier(config.classifier)
            metrics["recognition"] = recognition(classifier, views, classes.index(d.prompt))  # all particles' views
        return metrics


def distill_score(config: DistillScoreConfig) -> dict[str, Any]:
    """Distil to `config.distill.steps` in `<output_root>/score/<name>/` (resuming its latest checkpoint when
    `config.run.resume`) and write the outputs; returns the final metrics (empty when a limit ended the
    invocation early)."""
    for key, table in (("guidance", GUIDANCES), ("target", TARGETS)):
        if getattr(config, key) not in table:
            raise DataError(None, key, f"'{getattr(config, key)}' is not one of {sorted(table)}")
    d = config.distill
    prior = load_prior(config.prior)
    run = config.run.open("score", config.run_name)
    torch.manual_seed(d.seed)  # the guidance's estimator initialisation: same seed, same run
    guidance = make_run_guidance(config.guidance, prior, config.schedule, d.steps)
    students = [build_target(config.target, d.seed + k, config.targets, guidance=config.guidance)
                for k in range(config.particles)]
    return fit(ScoreRun(config, prior, guidance, students), run, config.run, d.steps, job_config=config).metrics
