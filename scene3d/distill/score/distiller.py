"""Score distillation over any differentiable renderer, as a `scene3d.train.Trainable`.

A `Target` is a 3D scene seen only through `render(cameras) -> images [B,3,H,W] in [0,1]` plus the
optimizer of its parameters (a radiance field, a Gaussian scene, or in the tests a learnable image).
Several targets are VSD's particles: their renders form one guidance batch, so the estimator of
the rendered distribution sees all of them.

    distiller = ScoreDistiller(prior, guidance, [target], DistillConfig(prompt="torus", steps=200))
    fit(distiller, None, RunConfig(progress=False), distiller.config.steps)   # or a RunDir: checkpoints, resume
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.config import Range
from scene3d.diffusion.base import DiffusionPrior
from scene3d.diffusion.data import ObjectViews
from scene3d.distill.score.guidance import Guidance, clip_pixel_gradients
from scene3d.distill.score.views import random_cameras
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import FitResult


@dataclass
class Target:
    render: Callable[[Cameras], Tensor]
    optimizer: torch.optim.Optimizer
    after_step: Callable[[int], None] | None = None  # after each optimizer step, given the 0-based step index
    pixel_grad_clip: float | None = None  # Dreamer XL's per-pixel clipping (Gaussian targets)
    regularization: Callable[[], Tensor] | None = None  # the scene's own regulariser, added to the loss


@dataclass
class DistillConfig:
    prompt: str = "sphere"
    steps: Annotated[int, Range(1)] = 200
    batch_size: Annotated[int, Range(1)] = 4  # views per target per step
    render_size: Annotated[int, Range(1, 4096)] = 32
    view_dependent: bool = True  # append the view to text prompts (class priors ignore it)
    views: ObjectViews = field(default_factory=ObjectViews)
    seed: int = 0
    lr_end_factor: Annotated[float, Range(0, above=True)] = 0.1  # learning rates decay to this fraction by the end


class ScoreDistiller:
    """One step: random cameras per target -> renders -> guidance (VSD updates its estimator inside)
    -> the surrogate loss (`loss`); after the backward pass, every target's optimizer step and its
    `after_step` (`apply`). A `scene3d.train.Trainable`; `finish` returns no metrics (a run adds its own)."""

    def __init__(self, prior: DiffusionPrior, guidance: Guidance, targets: list[Target], config: DistillConfig):
        self.prior, self.guidance, self.targets, self.config = prior, guidance, targets, config
        self.name = f"distill {config.prompt}"
        self.generator = torch.Generator().manual_seed(config.seed)
        self.estimator_optimizer = getattr(guidance, "optimizer", None)

    def named_parameters(self) -> list[tuple[str, Tensor]]:
        """Every target's parameters (as its optimizer holds them), named `target<i>.<j>`."""
        return [(f"target{i}.{j}", p) for i, t in enumerate(self.targets)
                for j, p in enumerate(p for g in t.optimizer.param_groups for p in g["params"])]

    def decay_learning_rates(self, done: int) -> None:
        """lr = base_lr * lr_end_factor ** (done / (steps - 1)) after `done` steps, in every target's
        optimizer (3DGS and DreamGaussian decay the Gaussians' position lr so; here every parameter group).
        The base lr is kept in the group as `initial_lr`, so a rebuilt optimizer (TensoRF upsampling)
        starts from its own."""
        factor = self.config.lr_end_factor ** (done / max(1, self.config.steps - 1))
        for target in self.targets:
            for group in target.optimizer.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor

    # the Trainable protocol -----------------------------------------------------------------------
    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        """Step `step` (from 1): the guidance's surrogate summed over the targets plus their regularisers."""
        c, done = self.config, step - 1
        self.decay_learning_rates(done)
        renders, cams, names = [], [], []
        for target in self.targets:
            cameras, view = random_cameras(c.batch_size, c.render_size, c.views, self.generator)
            images = target.render(cameras)
            if target.pixel_grad_clip is not None:
                images = clip_pixel_gradients(images, target.pixel_grad_clip)
            renders.append(images)
            cams.append(cameras)
            names.extend(view)
        images = torch.cat(renders)
        cameras = Cameras.cat(cams)
        b = len(images)
        cond = self.prior.condition(c.prompt, b, names if c.view_dependent else None)
        null = self.prior.null_condition(b)
        for target in self.targets:
            target.optimizer.zero_grad(set_to_none=True)
        out = self.guidance(images, cond, null, done, cameras=cameras, generator=self.generator)
        # Each particle gets the gradient it would get alone: the surrogate is summed over particles.
        loss = out.loss * len(self.targets)
        for target in self.targets:
            if target.regularization is not None:
                loss = loss + target.regularization()
        return loss, {"loss": float(out.loss.detach()), **out.extras}

    def guarded_parameters(self) -> list[tuple[str, Tensor]]:
        return self.named_parameters()

    def apply(self, step: int) -> dict[str, float]:
        """Every target's optimizer step, then its `after_step` (densification, upsampling)."""
        for target in self.targets:
            target.optimizer.step()
            if target.after_step is not None:
                target.after_step(step - 1)
        return {}

    def validate(self) -> dict[str, float]:
        return {}

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        return {}

    def checkpoint_config(self) -> dict[str, Any]:
        return config_to_dict(self.config)

    def state_dict(self) -> dict[str, Any]:
        """Targets' parameters and optimizers, the guidance's trainable estimator and its
        optimizer, and the RNG states: everything an exact resume needs."""
        guidance = self.guidance.trainable_parameters()
        state = {"targets": [{"params": [p.detach() for g in t.optimizer.param_groups for p in g["params"]],
                              "optimizer": t.optimizer.state_dict()} for t in self.targets],
                 "guidance": [p.detach() for p in guidance],
                 "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}}
        if self.estimator_optimizer is not None:
            state["estimator_optimizer"] = self.estimator_optimizer.state_dict()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict` (shapes must match; errors become the caller's CheckpointError)."""
        for target, saved in zip(self.targets, state["targets"], strict=True):
            params = [p for g in target.optimizer.param_groups for p in g["params"]]
            for p, value in zip(params, saved["params"], strict=True):
                p.copy_(value)
            target.optimizer.load_state_dict(saved["optimizer"])
        for p, value in zip(self.guidance.trainable_parameters(), state["guidance"], strict=True):
            p.copy_(value)
        if self.estimator_optimizer is not None:
            self.estimator_optimizer.load_state_dict(state["estimator_optimizer"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])


def image_target(size: int, lr: float = 0.03, seed: int = 0) -> tuple[Target, torch.nn.Parameter]:
    """The simplest differentiable 'scene': one learnable image (sigmoid of logits) seen identically
    from every camera. Used to test guidances and to sanity-check a prior in 2D."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.nn.Parameter(0.1 * torch.randn(1, 3, size, size, generator=g))
    render = lambda cams: torch.sigmoid(logits).expand(len(cams), -1, -1, -1)  # noqa: E731
    return Target(render, torch.optim.Adam([logits], lr=lr)), logits
