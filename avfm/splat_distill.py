"""Splat-and-distill with avfm's dense teachers (`scene3d.distill.splat` does the work): builds the
teacher and the student and hands them over, as DESIGN's layering asks.

`run_splat_distill(cfg)`: one student (`distill.target_source` "splat" or "fit3d") in
`outputs/splat_distill/<name>/` with TensorBoard, checkpoints and exact resume. The comparison of
teacher and students through the 3D-awareness probes is `lab.eval.awareness.compare_3d_awareness`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn

from avfm.teachers import (
    DenseTeacherConfig,
    Teacher,
    ViTTeacher,
    build_teacher,
    load_vit_teacher,
    save_vit_teacher,
    train_dense_teacher,
)
from scene3d.data.dataset import MultiViewDataset
from scene3d.distill.splat.data import make_world_views
from scene3d.distill.splat.depth import DepthNetConfig, depth_fn, train_depth_net
from scene3d.distill.splat.distiller import SplatDistillConfig, SplatDistiller, distill, pixel_features
from scene3d.distill.splat.fit3d import Fit3DConfig, fit_feature_gaussians
from scene3d.distill.splat.probes import ProbeConfig, probe_3d_awareness
from scene3d.distill.splat.viz import plot_losses, save_feature_panel
from scene3d.runs import RunDir

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

    n_distill: int = 8
    n_views: int = 24
    size: int = 64
    n_probe_train: int = 4
    n_probe_test: int = 4
    probe_views: int = 12
    probe_train_seed: int = 10_000
    probe_test_seed: int = 20_000


@dataclass
class TeacherSpec:
    name: str = "trained"  # trained (small ViT trained here on the distillation worlds), random_vit, dinov2, dinov3
    path: Path | None = None  # a saved teacher (trained) or an HF model directory (dinov2 / dinov3)
    seed: int = 0
    train: DenseTeacherConfig = field(default_factory=lambda: DenseTeacherConfig(steps=300))


@dataclass
class SplatRunConfig:
    name: str = "default"
    output_root: Path = Path("outputs")
    worlds: WorldsConfig = field(default_factory=WorldsConfig)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    distill: SplatDistillConfig = field(default_factory=SplatDistillConfig)
    fit3d: Fit3DConfig = field(default_factory=Fit3DConfig)
    depth_net: DepthNetConfig = field(default_factory=DepthNetConfig)  # for distill.depth_source="learned"
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    run_probes: bool = True  # probe the teacher and the student on held-out worlds at the end
    checkpoint_every: int = 50
    progress: bool = True


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
    """The frozen teacher as a dense map. `trained` without a path trains the small dense teacher on the
    distillation worlds' views and semantic labels (once: saved to `saved` and reloaded from there)."""
    if spec.name == "trained" and spec.path is None:
        if saved is not None and saved.is_file():
            return DenseFeatures(load_vit_teacher(saved))
        images = torch.cat([rearrange(w.images, "n h w c -> n c h w") for w in worlds])
        labels = torch.cat([w.semantic for w in worlds])
        teacher, _ = train_dense_teacher(images, labels, NUM_CLASSES, cfg=spec.train, progress=progress)
        if saved is not None:
            save_vit_teacher(saved, teacher)
        return DenseFeatures(teacher)
    if spec.name == "random_vit":
        return DenseFeatures(build_teacher("random_vit", seed=spec.seed))
    return DenseFeatures(build_teacher(spec.name, path=spec.path))


def fit3d_scenes(teacher: nn.Module, worlds: list[MultiViewDataset], cfg: Fit3DConfig, progress: bool = False):
    """The FiT3D-style baseline's per-world feature Gaussians (fitted to the frozen teacher)."""
    scenes, losses = [], []
    for ds in worlds:
        feats = pixel_features(teacher, ds, torch.arange(len(ds)), edge_aware=False)
        scene, curve = fit_feature_gaussians(ds, feats, cfg, progress)
        scenes.append(scene)
        losses.append(curve[-1])
    return scenes, losses


def run_splat_distill(cfg: SplatRunConfig, teacher: DenseFeatures | None = None,
                      worlds: list[MultiViewDataset] | None = None, stop_at: int | None = None) -> dict:
    """Train one student from the teacher (resuming from the run's newest checkpoint), save it as
    `student.safetensors`, optionally probe teacher and student; returns the metrics."""
    t0 = time.time()
    worlds = worlds if worlds is not None else distill_worlds(cfg.worlds)
    if teacher is None:  # bad teacher paths fail here, before the run folder is touched
        saved = Path(cfg.output_root) / "splat_distill" / cfg.name / "teacher.safetensors"
        teacher = make_teacher(cfg.teacher, worlds, saved, cfg.progress)
    run = RunDir.create("splat_distill", cfg.name, root=cfg.output_root)
    run.save_config(cfg)
    scenes, fit_losses = None, []
    if cfg.distill.target_source == "fit3d":  # deterministic from its seed, so a resumed run refits the same
        scenes, fit_losses = fit3d_scenes(teacher, worlds, cfg.fit3d, cfg.progress)
    predict_depth = None
    if cfg.distill.depth_source == "learned":  # deterministic from its seed, so a resumed run rebuilds it
        net, _ = train_depth_net(worlds, cfg.depth_net, cfg.progress)
        predict_depth = depth_fn(net)
    student, ema = copy.deepcopy(teacher), copy.deepcopy(teacher)
    distiller = SplatDistiller(student, ema, worlds, cfg.distill, fit3d_scenes=scenes, depth_fn=predict_depth)
    history = distill(distiller, run, cfg.checkpoint_every, progress=cfg.progress, config=cfg, stop_at=stop_at)
    metrics: dict = {"steps": distiller.cfg.steps if stop_at is None else stop_at,
                     "target_source": cfg.distill.target_source}
    if fit_losses:
        metrics["fit3d_final_mse"] = sum(fit_losses) / len(fit_losses)
    if history:
        k = max(1, len(history) // 10)
        metrics["loss_first"] = sum(h["loss"] for h in history[:k]) / k
        metrics["loss_last"] = sum(h["loss"] for h in history[-k:]) / k
        plot_losses(run.file("loss.png"), {cfg.distill.target_source: [h["loss"] for h in history]})
    if isinstance(student.teacher, ViTTeacher):
        save_vit_teacher(run.file("student.safetensors"), student.teacher)
    if cfg.run_probes and stop_at is None:
        probe_train, probe_test = probe_worlds(cfg.worlds)
        save_feature_panel(run.file("features.png"), probe_test[0].images[:6], {"teacher": teacher, "student": student})
        metrics["probes"] = {"teacher": probe_3d_awareness(teacher, probe_train, probe_test, cfg.probe),
                             "student": probe_3d_awareness(student, probe_train, probe_test, cfg.probe)}
    metrics["seconds"] = round(time.time() - t0, 1)
    run.save_metrics(metrics)
    run.close()
    metrics["student"] = student
    return metrics
