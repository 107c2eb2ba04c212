"""A teacher trained on its own (`scripts/train_teacher.py`), in `<output_root>/teachers/<name>/`, saved as
`teacher.safetensors` for `--teacher.path` of `scripts/train_avfm.py`: the self-supervised one (default)
or the label-trained one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from avfm.data import load_scenes
from avfm.self_distillation import SelfDistillationConfig, SelfDistillationTrainer
from avfm.teachers import DenseTeacherConfig, DenseTeacherTrainer, save_vit_teacher
from scene3d.checkpoint import atomic_write_json
from scene3d.config import Range, check
from scene3d.train import FitResult, RunConfig, fit


@dataclass
class TeacherRunConfig:
    """`n` scenes of `source` at `resolution` px (scene seed `seed`); `kind` self_supervised (no labels) or
    supervised (needs dense labels); run folder name default: the kind."""

    kind: Literal["self_supervised", "supervised"] = "self_supervised"
    source: Literal["synthetic", "toy", "folder", "photos"] = "synthetic"
    path: str | None = None  # the folder of the 'folder' source
    n: Annotated[int, Range(1)] = 512
    resolution: Annotated[int, Range(8, 4096)] = 64
    seed: int = 0
    self_supervised: SelfDistillationConfig = field(default_factory=SelfDistillationConfig)
    # > 0: once trained, probe the teacher and its untrained initialisation on this many held-out scenes
    # (scene seed `seed` + 1) and write probe.json in the run folder
    probe_scenes: Annotated[int, Range(0)] = 0
    probe_steps: Annotated[int, Range(1)] = 300
    supervised: DenseTeacherConfig = field(default_factory=DenseTeacherConfig)
    # --name, --output-root, --checkpoint-every, --log-every, --stop-after, ... (scene3d.train.RunConfig)
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: RunConfig(log_every=10, eval_every=0, checkpoint_every=100))

    def __post_init__(self) -> None:
        check(self)


def train_teacher_run(config: TeacherRunConfig) -> tuple[object, FitResult, Path | None]:
    """Train (or resume) the teacher run; once complete, save the frozen teacher as `teacher.safetensors`
    in its folder. Returns the trainer, what `fit` did and that file (None when a limit ended the run)."""
    scenes = load_scenes(config.source, config.n, config.resolution, config.seed, config.path)
    if config.kind == "self_supervised":
        trainer = SelfDistillationTrainer(scenes.images, config.self_supervised)
        steps, frozen = config.self_supervised.steps, lambda: trainer.vit_teacher
    else:
        trainer = DenseTeacherTrainer(scenes.images, scenes.labels, scenes.num_classes, scenes.scene_class,
                                      config.supervised)
        steps, frozen = config.supervised.steps, lambda: trainer.teacher
    run = config.run.open("teachers", config.kind)
    result = fit(trainer, run, config.run, steps, job_config=config)
    if not result.complete:
        return trainer, result, None
    return trainer, result, save_vit_teacher(run.path / "teacher.safetensors", frozen().eval().requires_grad_(False))


def probe_teacher(config: TeacherRunConfig, teacher, folder: Path) -> dict:
    """Linear segmentation probes (`avfm.evaluate.teacher_baseline`, full resolution) of the trained teacher
    and of the same ViT at its initialisation, trained on the run's scenes and scored on `probe_scenes`
    held-out ones; written to `folder/probe.json`."""
    from avfm.evaluate import teacher_baseline, untrained_like

    train = load_scenes(config.source, config.n, config.resolution, config.seed, config.path)
    held = load_scenes(config.source, config.probe_scenes, config.resolution, config.seed + 1, config.path)
    if train.labels is None:
        raise ValueError(f"--probe-scenes: the '{config.source}' source has no labels to probe")
    seed = getattr(config, config.kind).seed
    out = {"kind": config.kind, "resolution": config.resolution, "train_scenes": config.n,
           "probe_scenes": config.probe_scenes, "probe_steps": config.probe_steps,
           "trained": teacher_baseline(teacher, train, held, config.resolution, config.probe_steps, 0),
           "untrained": teacher_baseline(untrained_like(teacher, seed), train, held, config.resolution,
                                         config.probe_steps, 0)}
    atomic_write_json(folder / "probe.json", out)
    return out
