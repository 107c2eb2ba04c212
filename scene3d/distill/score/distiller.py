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
from scene3d.checkpoint import restoring
from scene3d.diffusion.base import DiffusionPrior
from scene3d.diffusion.data import ObjectViews
from scene3d.distill.score.guidance import Guidance, clip_pixel_gradients
from scene3d.distill.score.views import random_cameras
from scene3d.guard import FiniteGuard
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
    checkpoint_every: int = 100  # with a run directory: targets, optimizers, estimator, RNG, step
    resume: bool = True  # continue from the run directory's latest checkpoint
    lr_end_factor: float = 0.1  # every target's learning rates decay exponentially to this fraction by the last step
    nonfinite: str = "stop"  # NaN / inf loss, gradient or parameter: "stop" (naming step and tensor) or "skip"


class ScoreDistiller:
    """One step: random cameras per target -> renders -> guidance -> backward -> optimizer steps."""

    def __init__(self, prior: DiffusionPrior, guidance: Guidance, targets: list[Target], config: DistillConfig):
        self.prior, self.guidance, self.targets, self.config = prior, guidance, targets, config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.estimator_optimizer = getattr(guidance, "optimizer", None)
        self.guard = FiniteGuard(config.nonfinite)

    def named_parameters(self) -> list[tuple[str, Tensor]]:
        """Every target's parameters (as its optimizer holds them), named `target<i>.<j>`."""
        return [(f"target{i}.{j}", p) for i, t in enumerate(self.targets)
                for j, p in enumerate(p for g in t.optimizer.param_groups for p in g["params"])]

    def state_dict(self) -> dict:
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
    def load_state_dict(self, state: dict) -> None:
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

    def decay_learning_rates(self, step: int) -> None:
        """lr = base_lr * lr_end_factor ** (step / (steps - 1)) in every target's optimizer (3DGS and
        DreamGaussian decay the Gaussians' position lr so; here every parameter group). The base lr is
        kept in the group as `initial_lr`, so a rebuilt optimizer (TensoRF upsampling) starts from its own."""
        factor = self.config.lr_end_factor ** (step / max(1, self.config.steps - 1))
        for target in self.targets:
            for group in target.optimizer.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor

    def step(self, step: int) -> dict[str, float]:
        c = self.config
        self.decay_learning_rates(step)
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
        if self.guard.loss(step + 1, loss):
            loss.backward()
            if self.guard.gradients(step + 1, self.named_parameters()):
                for target in self.targets:
                    target.optimizer.step()
                    if target.after_step is not None:
                        target.after_step(step)
            self.guard.parameters(step + 1, self.named_parameters())
        return {"loss": float(out.loss.detach()), **out.extras}

    def run(self, run: RunDir | None = None, start_step: int = 0, progress: bool = True) -> list[dict[str, float]]:
        """Steps `start_step..steps`; with a run directory, checkpoints every `checkpoint_every`
        steps and (when `resume`) first continues from the run's latest checkpoint."""
        c = self.config
        if run is not None:
            self.guard.checkpoint_dir = run.path / "checkpoints"
            loaded = run.load_latest() if c.resume else None
            if loaded is not None:
                with restoring(run.latest_checkpoint(), "distiller state"):
                    self.load_state_dict(loaded[0])
                    start_step = int(loaded[0]["step"])
        history = []
        bar = tqdm(range(start_step, c.steps), desc=f"distill {c.prompt}", disable=not progress, dynamic_ncols=True,
                   initial=start_step, total=c.steps)
        for step in bar:
            metrics = self.step(step)
            history.append(metrics)
            if (step + 1) % c.log_every == 0:
                bar.set_postfix(grad=f"{metrics['grad_norm']:.3f}")
                if run is not None:
                    run.log_scalars(step + 1, metrics)
            if run is not None and c.checkpoint_every and ((step + 1) % c.checkpoint_every == 0 or step + 1 == c.steps):
                run.save_checkpoint(step + 1, self.state_dict(), c)
        return history


def image_target(size: int, lr: float = 0.03, seed: int = 0) -> tuple[Target, torch.nn.Parameter]:
    """The simplest differentiable 'scene': one learnable image (sigmoid of logits) seen identically
    from every camera. Used to test guidances and to sanity-check a prior in 2D."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.nn.Parameter(0.1 * torch.randn(1, 3, size, size, generator=g))
    render = lambda cams: torch.sigmoid(logits).expand(len(cams), -1, -1, -1)  # noqa: E731
    return Target(render, torch.optim.Adam([logits], lr=lr)), logits
