"""A volume-distillation run: load a teacher (field checkpoint or run directory), find its cameras and
test views, distil into a student with progress bar, TensorBoard, periodic test PSNR/SSIM against
the teacher's renders and the ground truth, PNG renders, rotating checkpoints and exact resume.
`--student splats` distils into a 3D Gaussian scene instead (`volume_to_gaussians`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import torch
from tqdm import tqdm

from scene3d.cameras import orbit_cameras
from scene3d.checkpoint import load_checkpoint
from scene3d.data.dataset import MultiViewDataset
from scene3d.data.formats import load_dataset
from scene3d.distill.volume import EvalViews, VolumeDistillConfig, VolumeDistiller
from scene3d.distill.volume_active import Shell
from scene3d.distill.volume_to_gaussians import FieldToGaussianDistiller, SplatDistillConfig, SplatOptions
from scene3d.errors import CheckpointError
from scene3d.fields.base import Field, field_from_spec, load_field_state, save_field
from scene3d.fields.train import FitConfig, depth_to_rgb, load_data, to_uint8
from scene3d.gaussians.ply import write_ply
from scene3d.runs import RunDir, config_to_dict
from scene3d.viz import image_grid, save_png

_FIT_KEYS = ("data", "world_seed", "n_train_views", "n_test_views", "image_size")
SPLATS = "splats"  # the student name that selects a 3D Gaussian scene


@dataclass
class DistillVolumeConfig(VolumeDistillConfig):
    """A run: `teacher` is a field checkpoint or a run directory (its latest checkpoint). The teacher's
    training views give the camera shell and the ground truth: from `data` when given, else from
    the teacher run's own fit config; without either a default shell around the box is used.
    Runs go to `<output_root>/distill/<name>/` and resume from their latest checkpoint.
    `student="splats"` trains a Gaussian scene (CPU) with the Gaussian-only options `splats`; steps,
    n_samples, epoch_views, epoch_steps, use_occupancy, occupancy, seed and nonfinite are shared with
    field students."""

    teacher: Path = Path("outputs/fields/hashgrid")
    data: Path | None = None
    name: str | None = None
    output_root: Path = Path("outputs")
    eval_every: int = 250
    eval_views: int = 4
    checkpoint_every: int = 250
    resume: bool = True
    splats: SplatOptions = dataclasses.field(default_factory=SplatOptions)

    def __post_init__(self) -> None:
        if self.student != SPLATS:  # a Gaussian student has no field options to check
            super().__post_init__()

    def splat_config(self) -> SplatDistillConfig:
        options = {f.name: getattr(self.splats, f.name) for f in dataclasses.fields(SplatOptions)}
        return SplatDistillConfig(**options, steps=self.steps, n_samples=self.n_samples, epoch_views=self.epoch_views,
                                  epoch_steps=self.epoch_steps, use_occupancy=self.use_occupancy,
                                  occupancy=self.occupancy, seed=self.seed, nonfinite=self.nonfinite)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file as given, or the latest checkpoint of a run directory."""
    path = Path(path)
    if path.is_dir():
        latest = RunDir(path).latest_checkpoint()
        if latest is None:
            raise CheckpointError(path, "checkpoints", "run directory holds no step_*.safetensors checkpoint")
        return latest
    return path


def load_teacher(path: Path, device: str | torch.device = "cpu") -> tuple[Field, dict[str, Any]]:
    """(teacher field, its checkpoint config) from a field checkpoint or a run directory."""
    path = resolve_checkpoint(path)
    state, config = load_checkpoint(path, device)
    if "field" not in state or "field" not in config:
        raise CheckpointError(path, "field", "not a field checkpoint (no 'field' state or config)")
    field = field_from_spec(config, path).to(device)
    load_field_state(field, state["field"], path)
    return field, config


def teacher_views(data: Path | None, teacher_config: dict[str, Any]
                  ) -> tuple[MultiViewDataset, MultiViewDataset] | None:
    """(train, test) views of the teacher's scene: `data`, else the teacher run's fit config, else None."""
    if data is not None:
        return load_dataset(data, "train"), load_dataset(data, "test")
    fit = teacher_config.get("fit")
    if not fit:
        return None
    kwargs = {k: fit[k] for k in _FIT_KEYS if k in fit}
    if kwargs.get("data") is not None:
        kwargs["data"] = Path(kwargs["data"])
    return load_data(FitConfig(**kwargs))


def save_renders(run: RunDir, out: dict[str, torch.Tensor], views: EvalViews) -> list[Path]:
    """PNG per test view: ground truth (when known) | teacher | student | student depth."""
    paths = []
    for i in range(len(out["rgb"])):
        parts = [] if views.ground_truth is None else [views.ground_truth[i].float()]
        parts += [views.teacher_rgb[i], out["rgb"][i].cpu(), depth_to_rgb(out["depth"][i].cpu())]
        path = run.file("renders", f"test_{i:03d}.png")
        iio.imwrite(path, to_uint8(torch.cat(parts, dim=1)))
        paths.append(path)
    return paths


def teacher_setup(config: DistillVolumeConfig) -> tuple[Field, Shell, EvalViews, dict[str, Any]]:
    """The run's teacher, its camera shell, the test views and the extra checkpoint config (teacher path, its fit)."""
    teacher, teacher_config = load_teacher(config.teacher)
    splits = teacher_views(config.data, teacher_config)
    if splits is None:
        shell = Shell.around_box(teacher.aabb)
        mid = sum(shell.radius) / 2
        cams = orbit_cameras(8, mid, sum(shell.elevation_deg) / 2, shell.fov_x_deg, shell.width, shell.height,
                             shell.target, azimuth_offset_deg=11.25)
        views = EvalViews(cams, torch.ones(teacher.config.color_dim))
    else:
        train, test = splits
        shell = Shell.from_cameras(train.cameras)
        views = EvalViews(test.cameras, test.background.float(), ground_truth=test.images)
    extra = {"teacher": str(config.teacher), "teacher_field": teacher.name}
    if "fit" in teacher_config:
        extra["fit"] = teacher_config["fit"]
    return teacher, shell, views, extra


def build_distiller(config: DistillVolumeConfig) -> tuple[VolumeDistiller, dict[str, Any]]:
    """The distiller of a run config, and the extra checkpoint config (teacher path, its fit)."""
    teacher, shell, views, extra = teacher_setup(config)
    return VolumeDistiller(config, teacher, shell, views), extra


def train_to_end(distiller, run: RunDir, config: DistillVolumeConfig, checkpoint_config: Callable[[], dict], desc: str,
                 progress: bool, extra_scalars: Callable[[int], dict[str, float]]) -> list[dict[str, Any]]:
    """Step `distiller` (a field or a Gaussian student) to `config.steps` with a progress bar,
    scalars every 50 steps, test metrics every `eval_every` and checkpoints every
    `checkpoint_every`; returns the test-metric timeline (seconds since this call)."""
    bar = tqdm(total=config.steps, initial=distiller.step, disable=not progress, desc=desc)
    start, timeline = time.perf_counter(), []
    while distiller.step < config.steps:
        logs = distiller.train_step()
        bar.update(1)
        step = distiller.step
        if step % 50 == 0 or step == config.steps:
            bar.set_postfix(psnr_t=f"{logs['psnr_vs_teacher']:.2f}")
            run.log_scalars(step, {f"train/{k}": v for k, v in logs.items()} | extra_scalars(step))
        if step % config.eval_every == 0 or step == config.steps:
            metrics, _ = distiller.evaluate(config.eval_views)
            timeline.append({"step": step, "seconds": time.perf_counter() - start, **metrics})
            run.log_scalars(step, {f"test/{k}": v for k, v in metrics.items()})
        if step % config.checkpoint_every == 0 or step == config.steps:
            run.save_checkpoint(step, distiller.state_dict(), checkpoint_config())
    bar.close()
    return timeline


def distill_volume(config: DistillVolumeConfig, progress: bool = True) -> tuple[VolumeDistiller, dict[str, Any]]:
    """Distil to `config.steps` (resuming from the run's latest checkpoint when `config.resume`),
    evaluate, write renders, the student field (`student.safetensors`) and metrics."""
    if config.student == SPLATS:
        return distill_splats(config, progress)
    distiller, extra = build_distiller(config)
    name = config.name or f"{distiller.teacher.name}_to_{config.student}"
    run = RunDir.create("distill", name, root=config.output_root)
    run.save_config(config)
    distiller.guard.checkpoint_dir = run.path / "checkpoints"
    if config.resume and (loaded := run.load_latest(distiller.device)) is not None:
        distiller.load_state_dict(loaded[0], run.latest_checkpoint())
    start = time.perf_counter()
    timeline = train_to_end(distiller, run, config, lambda: distiller.checkpoint_config(extra),
                            f"distil {distiller.teacher.name} -> {config.student}", progress,
                            lambda step: {f"weights/{k}": v for k, v in distiller.level_weights(step).items()})
    metrics, out = distiller.evaluate()
    save_renders(run, out, distiller.views)
    save_field(distiller.student, run.file("student.safetensors"))
    result = {"teacher": distiller.teacher.name, "student": config.student, "active": config.active,
              "schedule": config.schedule, "params": distiller.student.parameter_count(), "steps": distiller.step,
              "train_seconds": time.perf_counter() - start, **metrics, "timeline": timeline}
    run.save_metrics(result)
    run.close()
    return distiller, result


def distill_splats(config: DistillVolumeConfig, progress: bool = True
                   ) -> tuple[FieldToGaussianDistiller, dict[str, Any]]:
    """`distill_volume` for a Gaussian student: the same run layout, with `renders/test_grid.png`
    (rows: ground truth when known, teacher, student) and `scene.ply` instead of a student field."""
    teacher, shell, views, extra = teacher_setup(config)
    splat_config = config.splat_config()
    distiller = FieldToGaussianDistiller(splat_config, teacher, shell, views)
    run = RunDir.create("distill", config.name or f"{teacher.name}_to_{SPLATS}", root=config.output_root)
    run.save_config(config)
    distiller.guard.checkpoint_dir = run.path / "checkpoints"
    if config.resume and (loaded := run.load_latest()) is not None:
        distiller.load_state_dict(loaded[0], run.latest_checkpoint())
    checkpoint_config = {**extra, "splats": config_to_dict(splat_config), "shell": config_to_dict(shell)}
    start = time.perf_counter()
    timeline = train_to_end(distiller, run, config, lambda: checkpoint_config, f"distil {teacher.name} -> {SPLATS}",
                            progress,
                            lambda step: {"train/num_gaussians": len(distiller.scene)})
    metrics, pred = distiller.evaluate()
    k = min(4, len(pred))
    rows = [] if views.ground_truth is None else [list(views.ground_truth[:k].float())]
    save_png(run.file("renders", "test_grid.png"), image_grid([*rows, list(views.teacher_rgb[:k]), list(pred[:k])]))
    write_ply(run.file("scene.ply"), distiller.scene)
    result = {"teacher": teacher.name, "student": SPLATS, "num_gaussians": len(distiller.scene),
              "steps": distiller.step, "train_seconds": time.perf_counter() - start, **metrics, "timeline": timeline}
    run.save_metrics(result)
    run.close()
    return distiller, result
