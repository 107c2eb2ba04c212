"""A volume-distillation run: load a teacher (field checkpoint or run directory), find its cameras and
test views, and distil into a student through `scene3d.train.fit` (progress bar, TensorBoard, periodic
test PSNR/SSIM against the teacher's renders and the ground truth, PNG renders, rotating checkpoints
and exact resume). `--student splats` distils into a 3D Gaussian scene instead (`gaussian_student`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import tyro

from scene3d.cameras import orbit_cameras
from scene3d.checkpoint import load_checkpoint
from scene3d.config import Range
from scene3d.data.dataset import MultiViewDataset
from scene3d.data.formats import load_dataset
from scene3d.distill.volume.active import Shell
from scene3d.distill.volume.distiller import EvalViews, VolumeDistillConfig, VolumeDistiller
from scene3d.distill.volume.gaussian_student import (
    FieldToGaussianDistiller,
    GaussianStudentConfig,
    GaussianStudentOptions,
)
from scene3d.errors import CheckpointError
from scene3d.fields.base import Field, field_from_spec, load_field_state
from scene3d.fields.train import FitConfig, load_data
from scene3d.runs import RunDir
from scene3d.train import RunConfig, fit

_FIT_KEYS = ("data", "world_seed", "n_train_views", "n_test_views", "image_size")
SPLATS = "splats"  # the student name that selects a 3D Gaussian scene


@dataclass
class DistillVolumeConfig(VolumeDistillConfig):
    """A run: `teacher` is a field checkpoint or a run directory (its latest checkpoint). The teacher's
    training views give the camera shell and the ground truth: from `data` when given, else from
    the teacher run's own fit config; without either a default shell around the box is used.
    Runs go to `<output_root>/distill/<name>/` (name: `<teacher>_to_<student>`) and resume from their
    latest checkpoint. `student="splats"` trains a Gaussian scene (CPU) with the Gaussian-only options
    `splats`; steps, n_samples, epoch_views, epoch_steps, use_occupancy, occupancy and seed are shared
    with field students."""

    teacher: Path = Path("outputs/fields/hashgrid")
    data: Path | None = None
    eval_views: Annotated[int, Range(1)] = 4  # test views of the periodic evaluation (the final one uses all)
    splats: GaussianStudentOptions = dataclasses.field(default_factory=GaussianStudentOptions)
    # --name, --output-root, --eval-every, --checkpoint-every, --resume, ... (scene3d.train.RunConfig)
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = dataclasses.field(
        default_factory=lambda: RunConfig(eval_every=250, checkpoint_every=250))

    def students(self) -> list[str]:
        """The registered fields, and "splats" for a Gaussian student."""
        return [*super().students(), SPLATS]

    def splat_config(self) -> GaussianStudentConfig:
        options = {f.name: getattr(self.splats, f.name) for f in dataclasses.fields(GaussianStudentOptions)}
        return GaussianStudentConfig(**options, steps=self.steps, n_samples=self.n_samples,
                                     epoch_views=self.epoch_views, epoch_steps=self.epoch_steps,
                                     use_occupancy=self.use_occupancy, occupancy=self.occupancy, seed=self.seed)


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


def distill_volume(config: DistillVolumeConfig) -> tuple[VolumeDistiller | FieldToGaussianDistiller, dict[str, Any]]:
    """Distil to `config.steps` in `<output_root>/distill/<name>/` (resuming its latest checkpoint when
    `config.run.resume`): evaluate, write renders and the student (`student.safetensors`, or for
    splats `scene.ply` and `renders/test_grid.png`) and metrics. Returns the distiller and the final
    metrics (empty when a limit ended the invocation early)."""
    teacher, shell, views, extra = teacher_setup(config)
    if config.student == SPLATS:
        distiller = FieldToGaussianDistiller(config.splat_config(), teacher, shell, views)
    else:
        distiller = VolumeDistiller(config, teacher, shell, views)
    distiller.eval_views, distiller.checkpoint_extra = config.eval_views, extra
    run = config.run.open("distill", f"{teacher.name}_to_{config.student}")
    result = fit(distiller, run, config.run, config.steps, job_config=config)
    return distiller, result.metrics
