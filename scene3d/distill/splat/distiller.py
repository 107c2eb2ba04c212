"""Splat and Distill: 3D-aware distillation of a 2D dense model through feed-forward Gaussian lifting.

Per (context views, target view) tuple of a multi-view world: the EMA teacher's patch features of the
context views are upsampled to pixels (joint bilateral, guided by the RGB image: no label), optionally
PCA-compressed, lifted to one Gaussian per pixel at the depth and with the opacity a feed-forward
predictor gives from the context views alone (`mvs.py`, trained without depth labels) and splatted to
the target camera (`lift.py`); the rendered map, pooled to the student's patch grid and masked where
uncovered, is the target of the student on the target image (cosine or MSE). The teacher is an EMA of
the student (0.999 every 10 steps, as the paper), the student trains LoRA adapters (r = 8 on qkv and
proj) by default. `target_source` "fit3d" renders per-world feature Gaussians fitted once to every
view's teacher features instead (`fit3d.py`, teacher frozen); "2d" is the control without lifting:
the EMA teacher's own features of the target view. Ground truth enters only as options named oracle:
`depth_source="oracle"` (dataset depth and masks), `upsample="oracle_labels"` (instance maps).
`SplatDistiller` is a `scene3d.train.Trainable`: `scene3d.train.fit` trains it (checkpoints, exact
resume, the NaN guard).

`teacher` and `student` are any modules mapping images [B, 3, H, W] in [0, 1] to dense features
[B, D, h, w]; `scene3d` never builds them (scripts/splat_distill.py does, from avfm.teachers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor, nn

from scene3d.cameras import Cameras
from scene3d.config import Ordered, Range
from scene3d.data.dataset import MultiViewDataset
from scene3d.distill.splat.data import sample_tuple, view_angles
from scene3d.distill.splat.lift import (
    LiftConfig,
    LiftedGaussians,
    UpsampleMode,
    fit_pca,
    lift_views,
    splat_features,
    upsample_features,
)
from scene3d.distill.splat.supervision import pool_to_grid, segment_blend
from scene3d.distill.splat.viz import plot_losses
from scene3d.lora import add_lora
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import FitResult

# (images [V, H, W, 3], their cameras) -> (camera-z depth [V, H, W], opacity [V, H, W]); V >= 2 views, each
# predicted from the others (`scene3d.distill.splat.mvs.mvs_depth_fn`)
DepthFn = Callable[[Float[Tensor, "V H W 3"], Cameras], tuple[Float[Tensor, "V H W"], Float[Tensor, "V H W"]]]


@dataclass
class SplatDistillConfig:
    """Small CPU defaults (stated); see docs/splat_distill.md for the paper's setting."""

    steps: Annotated[int, Range(1)] = 300
    batch_size: Annotated[int, Range(1)] = 4  # tuples per step
    n_context: Annotated[int, Range(1)] = 2
    # angle between context and target optical axes
    baseline_deg: Annotated[tuple[float, float], Range(0, 180), Ordered()] = (10.0, 45.0)
    feature_mode: Literal["full", "pca"] = "full"
    pca_dim: Annotated[int, Range(1)] = 32
    upsample: UpsampleMode = "rgb"  # teacher patches to pixels; "oracle_labels" uses instance maps
    segment_blend: float = 0.0  # weight of the per-segment mean (oracle: instance maps stand in for SAM)
    alpha_min: float = 0.5  # rendered opacity below which a target pixel counts as uncovered
    min_coverage: float = 0.5  # fraction of covered pixels a student patch needs to enter the loss
    loss: Literal["cosine", "mse"] = "cosine"
    # teacher <- m teacher + (1 - m) student every `ema_every` steps (the paper: 0.999 every 10); 1 = frozen
    ema_momentum: Annotated[float, Range(0, 1)] = 0.999
    ema_every: Annotated[int, Range(1)] = 10
    lr: Annotated[float, Range(0, above=True)] = 3e-4
    weight_decay: Annotated[float, Range(0)] = 0.0
    warmup: Annotated[int, Range(0)] = 20
    # > 0: train LoRA adapters on the student's `lora_targets` linear layers only; 0: full fine-tuning
    lora_rank: Annotated[int, Range(0)] = 8
    lora_alpha: float | None = None  # LoRA scale alpha / rank; None: alpha = rank
    lora_targets: tuple[str, ...] = ("qkv", "proj")  # attribute names of the wrapped layers (the paper's)
    target_source: Literal["splat", "fit3d", "2d"] = "splat"
    depth_source: Literal["predicted", "oracle"] = "predicted"  # oracle: the dataset's depth and masks
    lift: LiftConfig = field(default_factory=LiftConfig)
    seed: int = 0


def step_generator(seed: int, step: int) -> torch.Generator:
    """The sampler's randomness of one step (exact resume needs no RNG state)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter; the student's
    frozen parameters and buffers are copied (exact, no rounding drift)."""
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        if ps.requires_grad:
            pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
        else:
            pt.copy_(ps)
    for bt, bs in zip(teacher.buffers(), student.buffers(), strict=True):
        bt.copy_(bs)


def feature_loss(pred: Float[Tensor, "B D h w"], target: Float[Tensor, "B D h w"], mask: Bool[Tensor, "B h w"],
                 kind: str) -> Tensor:
    """Masked cosine distance (1 - cos) or MSE (mean over channels), averaged over kept patches."""
    keep = mask.to(pred)
    if kind == "cosine":
        per = 1 - F.cosine_similarity(pred, target, dim=1)
    elif kind == "mse":
        per = (pred - target).pow(2).mean(1)
    else:
        raise ValueError(f"unknown loss {kind!r}; choose cosine or mse")
    return (per * keep).sum() / keep.sum().clamp_min(1)


def to_images(ds: MultiViewDataset, idx: Tensor) -> Float[Tensor, "B 3 H W"]:
    return rearrange(ds.images[idx], "b h w c -> b c h w")


@torch.no_grad()
def pixel_features(model: nn.Module, ds: MultiViewDataset, idx: Tensor, mode: UpsampleMode) -> Float[Tensor, "V H W D"]:
    """The model's patch features of views `idx`, upsampled to pixels (`upsample_features`' `mode`)."""
    images = to_images(ds, idx)
    labels = ds.instance[idx] if mode == "oracle_labels" and ds.instance is not None else None
    if mode == "oracle_labels" and labels is None:
        raise ValueError("upsample='oracle_labels' needs a dataset with instance maps")
    up = upsample_features(model(images), (ds.height, ds.width), mode, images=images, labels=labels)
    return rearrange(up, "v d h w -> v h w d")


def context_geometry(ds: MultiViewDataset, context: Tensor, cfg: SplatDistillConfig, depth_fn: DepthFn | None
                     ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(depth [V, H, W], valid [V, H, W] or None, opacity [V, H, W] or None) of the context views: predicted
    from the context images and cameras alone, or the dataset's (oracle)."""
    if cfg.depth_source == "predicted":
        if depth_fn is None:
            raise ValueError("depth_source='predicted' needs a depth_fn (a trained depth predictor)")
        depth, opacity = depth_fn(ds.images[context], ds.cameras[context])
        return depth, None, opacity
    if ds.depths is None:
        raise ValueError("depth_source='oracle' needs a dataset with depth maps")
    return ds.depths[context], ds.masks[context] if ds.masks is not None else None, None


@torch.no_grad()
def view_geometry(ds: MultiViewDataset, cfg: SplatDistillConfig, depth_fn: DepthFn | None, n_sources: int = 2
                  ) -> tuple[Float[Tensor, "N H W"], Float[Tensor, "N H W"]]:
    """Every view's depth and opacity: predicted from the view and its `n_sources` nearest views (by
    optical-axis angle), or the dataset's depth with its mask as opacity (oracle)."""
    if cfg.depth_source == "oracle":
        depth, valid, _ = context_geometry(ds, torch.arange(len(ds)), cfg, depth_fn)
        return depth, ((depth > 0) if valid is None else valid & (depth > 0)).to(depth)
    angles = view_angles(ds.cameras)
    angles.fill_diagonal_(-1.0)  # the view itself first
    depths, opacities = [], []
    for i in range(len(ds)):
        views = angles[i].argsort()[: n_sources + 1]
        depth, _, opacity = context_geometry(ds, views, cfg, depth_fn)
        depths.append(depth[0])
        opacities.append(opacity[0])
    return torch.stack(depths), torch.stack(opacities)


@torch.no_grad()
def splat_target(teacher: nn.Module, ds: MultiViewDataset, context: Tensor, target: int, grid: tuple[int, int],
                 cfg: SplatDistillConfig, depth_fn: DepthFn | None = None) -> tuple[Tensor, Tensor]:
    """Target features [D,h,w] and mask [h,w] for view `target`, splatted from the context views."""
    feats = pixel_features(teacher, ds, context, cfg.upsample)
    depth, valid, opacity = context_geometry(ds, context, cfg, depth_fn)
    basis = None
    if cfg.feature_mode == "pca":
        keep = depth > 0 if valid is None else valid & (depth > 0)
        mean, basis = fit_pca(feats[keep], cfg.pca_dim)
        feats = (feats - mean) @ basis
    gaussians = lift_views(ds.cameras[context], depth, feats, valid, cfg.lift, opacity=opacity)
    rendered, alpha = splat_features(gaussians, ds.cameras[[target]], eps2d=cfg.lift.eps2d)
    rendered, alpha = rendered[0], alpha[0]
    if basis is not None:
        rendered = rendered @ basis.T + mean
    return finish_target(rendered, alpha, ds, target, grid, cfg)


@torch.no_grad()
def self_target(teacher: nn.Module, ds: MultiViewDataset, target: int, grid: tuple[int, int],
                cfg: SplatDistillConfig) -> tuple[Tensor, Tensor]:
    """The 2D-only control's target: the teacher's own features of view `target` (upsampled and pooled as
    the lifted targets are), every patch kept."""
    feats = pixel_features(teacher, ds, torch.tensor([target]), cfg.upsample)[0]
    return pool_to_grid(feats, torch.ones(feats.shape[:2], dtype=torch.bool), grid, 0.0)


def finish_target(rendered: Float[Tensor, "H W D"], alpha: Float[Tensor, "H W"], ds: MultiViewDataset, target: int,
                  grid: tuple[int, int], cfg: SplatDistillConfig) -> tuple[Tensor, Tensor]:
    """Segment blending (target view's instance labels), pooling to the patch grid, coverage mask."""
    covered = alpha > cfg.alpha_min
    if cfg.segment_blend > 0 and ds.instance is not None:
        rendered = segment_blend(rendered, ds.instance[target], covered, cfg.segment_blend)
    return pool_to_grid(rendered, covered, grid, cfg.min_coverage)


class SplatDistiller:
    """Student, EMA teacher and optimizer; a `scene3d.train.Trainable`. A step samples a batch of tuples,
    builds their targets with the current teacher and scores the student on the target images; the
    update clips the gradients to norm 1, steps AdamW and moves the EMA teacher.

    `fit3d_scenes` (one `LiftedGaussians` per world, and `fit3d_decoders` mapping their features to the
    teacher's) serve the FiT3D baseline's targets; `depth_fn` gives the splat targets' predicted geometry."""

    def __init__(self, student: nn.Module, teacher: nn.Module, worlds: list[MultiViewDataset],
                 cfg: SplatDistillConfig, fit3d_scenes: list[LiftedGaussians] | None = None,
                 depth_fn: DepthFn | None = None, fit3d_decoders: list[nn.Module] | None = None):
        if cfg.target_source == "fit3d" and (fit3d_scenes is None or fit3d_decoders is None):
            raise ValueError("target_source='fit3d' needs the fitted per-world feature Gaussians and decoders")
        if cfg.target_source == "splat" and cfg.depth_source == "predicted" and depth_fn is None:
            raise ValueError("depth_source='predicted' needs a depth_fn (a trained depth predictor)")
        self.student, self.teacher, self.worlds, self.cfg = student, teacher.eval(), worlds, cfg
        self.fit3d_scenes, self.fit3d_decoders, self.depth_fn = fit3d_scenes, fit3d_decoders, depth_fn
        self.name = f"splat-distill ({cfg.target_source})"
        self.losses: list[float] = []  # per step, since the first (restored on resume)
        if cfg.lora_rank > 0:  # the same adapters on both (B = 0: nothing changes yet), student's copied over
            with torch.random.fork_rng(devices=[]):  # A's initialisation from the seed, whatever ran before
                torch.manual_seed(cfg.seed)
                if not add_lora(student, cfg.lora_rank, cfg.lora_alpha, names=cfg.lora_targets):  # freezes the rest
                    raise ValueError(f"lora_targets {cfg.lora_targets} name no linear layer of the student; "
                                     "set lora_rank=0 for full fine-tuning")
                add_lora(teacher, cfg.lora_rank, cfg.lora_alpha, names=cfg.lora_targets)
            teacher.load_state_dict(student.state_dict())
        else:
            self.student.requires_grad_(True)
        self.student.train()
        self.teacher.requires_grad_(False)
        self.opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)

    def lr_at(self, step: int) -> float:
        """Linear warm-up then cosine decay to 0 at `cfg.steps`."""
        warm = min(1.0, step / max(1, self.cfg.warmup))
        return self.cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(step, self.cfg.steps) / self.cfg.steps))

    def sample_batch(self, step: int) -> list[tuple[int, Tensor, int]]:
        g = step_generator(self.cfg.seed, step)
        batch = []
        for _ in range(self.cfg.batch_size):
            w = int(torch.randint(len(self.worlds), (), generator=g))
            context, target = sample_tuple(self.worlds[w].cameras, self.cfg.n_context, self.cfg.baseline_deg, g)
            batch.append((w, context, target))
        return batch

    @torch.no_grad()
    def targets(self, batch: list[tuple[int, Tensor, int]], grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        outs = []
        for w, context, target in batch:
            ds = self.worlds[w]
            if self.cfg.target_source == "fit3d":
                rendered, alpha = splat_features(self.fit3d_scenes[w], ds.cameras[[target]], eps2d=self.cfg.lift.eps2d)
                outs.append(finish_target(self.fit3d_decoders[w](rendered[0]), alpha[0], ds, target, grid, self.cfg))
            elif self.cfg.target_source == "2d":
                outs.append(self_target(self.teacher, ds, target, grid, self.cfg))
            else:
                outs.append(splat_target(self.teacher, ds, context, target, grid, self.cfg, self.depth_fn))
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def batch_loss(self, batch: list[tuple[int, Tensor, int]]) -> tuple[Tensor, Tensor]:
        """The student's loss on a batch of tuples, and the kept-patch mask [B, h, w]."""
        images = torch.stack([to_images(self.worlds[w], torch.tensor([t]))[0] for w, _, t in batch])
        pred = self.student(images)
        target, mask = self.targets(batch, tuple(pred.shape[-2:]))
        return feature_loss(pred, target, mask, self.cfg.loss), mask

    # the Trainable protocol ------------------------------------------------------------------------
    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        """Step `step` (from 1): its sampled tuples' loss with targets from the current teacher."""
        loss, mask = self.batch_loss(self.sample_batch(step))
        lr = self.lr_at(step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(loss.item())
        return loss, {"loss": self.losses[-1], "coverage": float(mask.float().mean()), "lr": lr}

    def guarded_parameters(self) -> Iterator[tuple[str, Tensor]]:
        return self.student.named_parameters()

    def apply(self, step: int) -> dict[str, float]:
        """Gradients clipped to norm 1, the AdamW step, then every `ema_every` steps the EMA teacher update
        (splat and 2D targets; FiT3D's teacher stays frozen)."""
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.opt.step()
        if self.cfg.target_source != "fit3d" and self.cfg.ema_momentum < 1 and step % self.cfg.ema_every == 0:
            ema_update(self.teacher, self.student, self.cfg.ema_momentum)
        return {}

    def validate(self) -> dict[str, float]:
        return {}

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        """The mean loss over the first and the last tenth of the steps; with a run folder, `loss.png`."""
        metrics: dict[str, Any] = {"target_source": self.cfg.target_source}
        if self.losses:
            k = max(1, len(self.losses) // 10)
            metrics["loss_first"] = sum(self.losses[:k]) / k
            metrics["loss_last"] = sum(self.losses[-k:]) / k
            if run is not None:
                plot_losses(run.file("loss.png"), {self.cfg.target_source: self.losses})
        return metrics

    def checkpoint_config(self) -> dict[str, Any]:
        return {"distill": config_to_dict(self.cfg)}

    def state_dict(self) -> dict[str, Any]:
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.opt.state_dict(), "losses": torch.tensor(self.losses, dtype=torch.float64),
                "rng": {"torch": torch.get_rng_state()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.opt.load_state_dict(state["optimizer"])
        self.losses = state["losses"].tolist()
        torch.set_rng_state(state["rng"]["torch"])
