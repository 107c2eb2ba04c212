"""Splat-and-distill with avfm's dense teachers (`scene3d.distill.splat` does the work): builds the
teacher and the student and hands them over, as DESIGN's layering asks.

`run_splat_distill(cfg)`: one student (`distill.target_source` "splat", "fit3d" or the "2d" control)
trained by `scene3d.train.fit` in `<output_root>/splat_distill/<name>/` (TensorBoard, checkpoints, exact
resume; the depth predictor, trained without depth labels, in its `mvs/` sub-folder). The teacher is
the self-supervised ViT of `avfm.self_distillation` trained on the distillation worlds' images (no
label); the label-trained one is the option `supervised`. The comparison of teacher, students and
controls through the 3D-awareness probes is `lab.eval.awareness.compare_3d_awareness`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro
from einops import rearrange
from torch import Tensor, nn

from avfm.self_distillation import SelfDistillationConfig, train_self_distillation
from avfm.teachers import (
    DenseTeacherConfig,
    Teacher,
    ViTTeacher,
    build_teacher,
    load_vit_teacher,
    save_vit_teacher,
    train_dense_teacher,
)
from scene3d.config import Range, check
from scene3d.data.dataset import MultiViewDataset
from scene3d.distill.splat.data import make_world_views
from scene3d.distill.splat.distiller import (
    DepthFn,
    SplatDistillConfig,
    SplatDistiller,
    pixel_features,
    view_geometry,
)
from scene3d.distill.splat.fit3d import Fit3DConfig, fit_feature_gaussians
from scene3d.distill.splat.mvs import MVSConfig, mvs_depth_fn, train_mvs
from scene3d.distill.splat.probes import ProbeConfig, probe_3d_awareness
from scene3d.distill.splat.viz import save_feature_panel
from scene3d.lora import merge_lora
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import FitResult, RunConfig, fit

NUM_CLASSES = 6  # scene3d.data.synthetic.CLASS_NAMES


class DenseFeatures(nn.Module):
    """A `Teacher` as a dense map: images [B, 3, H, W] in [0, 1] -> patch features [B, D, h, w]."""

    def __init__(self, teacher: Teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, images: Tensor) -> Tensor:
        out = self.teacher(images)
        return rearrange(out.patches, "b (h w) d -> b d h w", h=out.grid[0], w=out.grid[1])


@dataclass
class WorldsConfig:
    """Seeds 0.. are distillation worlds; probe-training and probe-test worlds are disjoint from them."""

    n_distill: Annotated[int, Range(1)] = 8
    n_views: Annotated[int, Range(2)] = 24
    size: Annotated[int, Range(8, 4096)] = 64
    n_probe_train: Annotated[int, Range(1)] = 4
    n_probe_test: Annotated[int, Range(1)] = 4
    probe_views: Annotated[int, Range(2)] = 12
    probe_train_seed: int = 10_000
    probe_test_seed: int = 20_000


@dataclass
class TeacherSpec:
    # self_supervised (DINO + iBOT on the distillation worlds' images, no label), supervised (trained on the
    # worlds' semantic labels), random_vit, dinov2, dinov3
    name: Literal["self_supervised", "supervised", "random_vit", "dinov2", "dinov3"] = "self_supervised"
    path: Path | None = None  # a saved ViT teacher (self_supervised / supervised) or an HF model directory
    seed: int = 0
    self_supervised: SelfDistillationConfig = field(default_factory=lambda: SelfDistillationConfig(steps=400))
    supervised: DenseTeacherConfig = field(default_factory=lambda: DenseTeacherConfig(steps=300))


def run_defaults(**overrides: Any) -> RunConfig:
    """A splat-distill run's loop: scalars every 10 steps, a checkpoint every 50, no periodic validation."""
    return RunConfig(**{"log_every": 10, "eval_every": 0, "checkpoint_every": 50, **overrides})


@dataclass
class SplatRunConfig:
    worlds: WorldsConfig = field(default_factory=WorldsConfig)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    distill: SplatDistillConfig = field(default_factory=SplatDistillConfig)
    fit3d: Fit3DConfig = field(default_factory=Fit3DConfig)
    mvs: MVSConfig = field(default_factory=MVSConfig)  # the depth predictor (distill.depth_source="predicted")
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    run_probes: bool = True  # probe the teacher and the student on held-out worlds at the end
    # --name, --output-root, --checkpoint-every, --resume, ... (scene3d.train.RunConfig)
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=run_defaults)

    def __post_init__(self) -> None:
        check(self)

    @property
    def run_name(self) -> str:
        return self.run.name or "default"


def distill_worlds(cfg: WorldsConfig) -> list[MultiViewDataset]:
    return make_world_views(range(cfg.n_distill), cfg.n_views, cfg.size)


def probe_worlds(cfg: WorldsConfig) -> tuple[list[MultiViewDataset], list[MultiViewDataset]]:
    train = make_world_views(range(cfg.probe_train_seed, cfg.probe_train_seed + cfg.n_probe_train), cfg.probe_views,
                             cfg.size)
    test = make_world_views(range(cfg.probe_test_seed, cfg.probe_test_seed + cfg.n_probe_test), cfg.probe_views,
                            cfg.size)
    return train, test


def make_teacher(spec: TeacherSpec, worlds: list[MultiViewDataset], saved: Path | None,
                 progress: bool = False) -> DenseFeatures:
    """The frozen teacher as a dense map. `self_supervised` / `supervised` without a path train the small ViT
    on the distillation worlds' images (and, supervised only, their semantic labels), once: saved to `saved`
    and reloaded from there."""
    if spec.name in ("self_supervised", "supervised"):
        if spec.path is not None:
            return DenseFeatures(load_vit_teacher(spec.path))
        if saved is not None and saved.is_file():
            return DenseFeatures(load_vit_teacher(saved))
        images = torch.cat([rearrange(w.images, "n h w c -> n c h w") for w in worlds])
        if spec.name == "self_supervised":
            cfg = dataclasses.replace(spec.self_supervised, seed=spec.seed)
            teacher, _ = train_self_distillation(images, cfg, progress=progress)
        else:
            labels = torch.cat([w.semantic for w in worlds])
            cfg = dataclasses.replace(spec.supervised, seed=spec.seed)
            teacher, _ = train_dense_teacher(images, labels, NUM_CLASSES, cfg=cfg, progress=progress)
        if saved is not None:
            save_vit_teacher(saved, teacher)
        return DenseFeatures(teacher)
    if spec.name == "random_vit":
        return DenseFeatures(build_teacher("random_vit", seed=spec.seed))
    return DenseFeatures(build_teacher(spec.name, path=spec.path))


def fit3d_scenes(teacher: nn.Module, worlds: list[MultiViewDataset], cfg: Fit3DConfig, distill: SplatDistillConfig,
                 depth_fn: DepthFn | None, progress: bool = False):
    """The FiT3D baseline's per-world feature Gaussians and decoders (fitted to the frozen teacher's features,
    upsampled as the splat targets are, on the geometry the splat targets use)."""
    scenes, decoders, losses = [], [], []
    for ds in worlds:
        feats = pixel_features(teacher, ds, torch.arange(len(ds)), distill.upsample)
        depth, opacity = view_geometry(ds, distill, depth_fn)
        scene, decoder, curve = fit_feature_gaussians(ds, feats, depth, opacity, cfg, progress)
        scenes.append(scene)
        decoders.append(decoder)
        losses.append(curve[-1])
    return scenes, decoders, losses


def train_depth_predictor(cfg: SplatRunConfig, worlds: list[MultiViewDataset], run: RunDir) -> DepthFn:
    """The depth predictor of a run, trained without depth labels on the distillation worlds in the run's
    `mvs/` folder (resumed from its own checkpoints; the run's limits are the student's)."""
    loop = dataclasses.replace(cfg.run, stop_after=None, max_minutes=None)
    net, _ = train_mvs(worlds, cfg.mvs, RunDir(run.path / "mvs"), loop)
    return mvs_depth_fn(net)


class SplatDistillRun(SplatDistiller):
    """The distiller of one `run_splat_distill` run: its checkpoints carry the run's config, and its final
    metrics add the FiT3D fits' error, `student.safetensors` (ViT students) and, with `run_probes`, the
    probes of teacher and student on held-out worlds and `features.png`."""

    def __init__(self, cfg: SplatRunConfig, teacher: DenseFeatures, worlds: list[MultiViewDataset],
                 fit3d_losses: list[float], started: float, **kwargs: Any):
        super().__init__(copy.deepcopy(teacher), copy.deepcopy(teacher), worlds, cfg.distill, **kwargs)
        self.job, self.frozen_teacher, self.fit3d_losses, self.started = cfg, teacher, fit3d_losses, started

    def checkpoint_config(self) -> dict[str, Any]:
        return config_to_dict(self.job)

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        metrics = super().finish(run, result)
        if self.fit3d_losses:
            metrics["fit3d_final_mse"] = sum(self.fit3d_losses) / len(self.fit3d_losses)
        if run is not None and isinstance(self.student.teacher, ViTTeacher):  # LoRA folded into the weights
            save_vit_teacher(run.file("student.safetensors"), merge_lora(copy.deepcopy(self.student.teacher)))
        if self.job.run_probes:
            probe_train, probe_test = probe_worlds(self.job.worlds)
            encoders = {"teacher": self.frozen_teacher, "student": self.student}
            if run is not None:
                save_feature_panel(run.file("features.png"), probe_test[0].images[:6], encoders)
            metrics["probes"] = {name: probe_3d_awareness(encoder, probe_train, probe_test, self.job.probe)
                                 for name, encoder in encoders.items()}
        metrics["seconds"] = round(time.time() - self.started, 1)
        return metrics


def run_splat_distill(cfg: SplatRunConfig, teacher: DenseFeatures | None = None,
                      worlds: list[MultiViewDataset] | None = None, depth_fn: DepthFn | None = None) -> dict:
    """Train one student from the teacher to `cfg.distill.steps` through `scene3d.train.fit` (resuming the
    run's newest checkpoint when `cfg.run.resume`); returns the final metrics (those of metrics.json)
    and the student ("student"), only the student when a limit (`stop_after`, `max_minutes`) ended
    the invocation early. `depth_fn` (a trained predictor) is trained in the run when needed and not given."""
    t0 = time.time()
    worlds = worlds if worlds is not None else distill_worlds(cfg.worlds)
    if teacher is None:  # bad teacher paths fail here, before the run folder is touched
        saved = Path(cfg.run.output_root) / "splat_distill" / cfg.run_name / "teacher.safetensors"
        teacher = make_teacher(cfg.teacher, worlds, saved, cfg.run.progress)
    run = cfg.run.open("splat_distill", cfg.run_name)
    source, predicted = cfg.distill.target_source, cfg.distill.depth_source == "predicted"
    if depth_fn is None and predicted and source in ("splat", "fit3d"):
        depth_fn = train_depth_predictor(cfg, worlds, run)
    scenes, decoders, fit_losses = None, None, []
    if source == "fit3d":  # deterministic from its seed, so a resumed run refits the same
        scenes, decoders, fit_losses = fit3d_scenes(teacher, worlds, cfg.fit3d, cfg.distill, depth_fn,
                                                    cfg.run.progress)
    distiller = SplatDistillRun(cfg, teacher, worlds, fit_losses, t0, fit3d_scenes=scenes, depth_fn=depth_fn,
                                fit3d_decoders=decoders)
    result = fit(distiller, run, cfg.run, cfg.distill.steps, job_config=cfg)
    return {**result.metrics, "student": distiller.student}
