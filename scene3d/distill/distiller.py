"""The score-distillation loop over any differentiable renderer.

A `Target` is a 3D scene seen only through `render(cameras) -> images [B,3,H,W] in [0,1]` plus the
optimizer of its parameters (a radiance field, a Gaussian scene, or in the tests a learnable image).
Several targets are VSD's particles: their renders form one guidance batch, so the estimator of
the rendered distribution sees all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from scene3d.cameras import Cameras
from scene3d.diffusion.base import DiffusionPrior
from scene3d.diffusion.data import ObjectViews
from scene3d.distill.score import Guidance, clip_pixel_gradients
from scene3d.distill.views import random_cameras
from scene3d.runs import RunDir


@dataclass
class Target:
    render: Callable[[Cameras], Tensor]
    optimizer: torch.optim.Optimizer
    after_step: Callable[[int], None] | None = None  # e.g. Gaussian densification
    pixel_grad_clip: float | None = None  # Dreamer XL's per-pixel clipping (Gaussian targets)
    regularization: Callable[[], Tensor] | None = None  # the scene's own regulariser, added to the loss


@dataclass
class DistillConfig:
    prompt: str = "sphere"
    steps: int = 200
    batch_size: int = 4  # views per target per step
    render_size: int = 32
    view_dependent: bool = True  # append the view to text prompts (class priors ignore it)
    views: ObjectViews = field(default_factory=ObjectViews)
    log_every: int = 10
    seed: int = 0


class ScoreDistiller:
    """One step: random cameras per target -> renders -> guidance -> backward -> optimizer steps."""

    def __init__(self, prior: DiffusionPrior, guidance: Guidance, targets: list[Target], config: DistillConfig):
        self.prior, self.guidance, self.targets, self.config = prior, guidance, targets, config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.estimator_optimizer = getattr(guidance, "optimizer", None)

    def step(self, step: int) -> dict[str, float]:
        c = self.config
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
        out = self.guidance(images, cond, null, step, cameras=cameras, generator=self.generator)
        # Each particle gets the gradient it would get alone: the surrogate is summed over particles.
        loss = out.loss * len(self.targets)
        for target in self.targets:
            if target.regularization is not None:
                loss = loss + target.regularization()
        loss.backward()
        for target in self.targets:
            target.optimizer.step()
            if target.after_step is not None:
                target.after_step(step)
        return {"loss": float(out.loss.detach()), **out.extras}

    def run(self, run: RunDir | None = None, start_step: int = 0, progress: bool = True) -> list[dict[str, float]]:
        history = []
        bar = tqdm(range(start_step, self.config.steps), desc=f"distill {self.config.prompt}",
                   disable=not progress, dynamic_ncols=True)
        for step in bar:
            metrics = self.step(step)
            history.append(metrics)
            if (step + 1) % self.config.log_every == 0:
                bar.set_postfix(grad=f"{metrics['grad_norm']:.3f}")
                if run is not None:
                    run.log_scalars(step + 1, metrics)
        return history


def image_target(size: int, lr: float = 0.03, seed: int = 0) -> tuple[Target, torch.nn.Parameter]:
    """The simplest differentiable 'scene': one learnable image (sigmoid of logits) seen identically
    from every camera. Used to test guidances and to sanity-check a prior in 2D."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.nn.Parameter(0.1 * torch.randn(1, 3, size, size, generator=g))
    render = lambda cams: torch.sigmoid(logits).expand(len(cams), -1, -1, -1)  # noqa: E731
    return Target(render, torch.optim.Adam([logits], lr=lr)), logits
