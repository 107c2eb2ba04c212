"""Train the pixel-space class-conditional prior on renders of single synthetic objects.

    run = train_prior(TrainPriorConfig(steps=2000))   # outputs/prior/objects32/

`PriorTrainer` is a `scene3d.train.Trainable`, so `fit` gives the run its config, TensorBoard +
scalars.jsonl, rotating atomic checkpoints (model, EMA, optimizer, RNG, step: resuming continues
bit-exactly) and metrics.json; the trainer writes sample grids `samples_<step>.png` (one row per
class) and the final EMA prior with diffusers' `save_pretrained` in `<run>/prior/`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
import torch.nn.functional as F
import tyro
from einops import rearrange
from torch import Tensor

from scene3d.config import Range, check
from scene3d.device import pick_device
from scene3d.diffusion.data import ObjectViews, render_objects
from scene3d.diffusion.pixel import PixelPrior, PixelPriorConfig
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import FitResult, RunConfig, fit
from scene3d.viz import image_grid, save_png


@dataclass
class TrainPriorConfig:
    """Defaults train a recognisable 32x32 prior in minutes on 2 CPU cores; `--prior.*` sets the UNet.
    Runs go to `<output_root>/prior/<name>/` (name: objects32) and resume from their latest checkpoint."""

    prior: PixelPriorConfig = field(default_factory=PixelPriorConfig)
    views: ObjectViews = field(default_factory=ObjectViews)
    n_objects_per_class: Annotated[int, Range(1)] = 128
    views_per_object: Annotated[int, Range(1)] = 8
    steps: Annotated[int, Range(1)] = 1500
    batch_size: Annotated[int, Range(1)] = 32
    lr: Annotated[float, Range(0, above=True)] = 2e-3
    warmup_steps: Annotated[int, Range(0)] = 100
    weight_decay: Annotated[float, Range(0)] = 0.0
    ema_decay: Annotated[float, Range(0, 1)] = 0.99
    hflip: bool = True
    sample_every: Annotated[int, Range(0)] = 500  # EMA samples `samples_<step>.png` every this many steps; 0: final
    samples_per_class: Annotated[int, Range(1)] = 8
    sample_steps: Annotated[int, Range(1)] = 50
    sample_guidance: Annotated[float, Range(0)] = 2.0
    seed: int = 0
    device: str = "auto"  # auto = cuda when available
    # --name, --output-root, --checkpoint-every, --log-every, --stop-after, ... (scene3d.train.RunConfig)
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: RunConfig(log_every=25, eval_every=0, checkpoint_every=500))

    def __post_init__(self) -> None:
        check(self)


def _lr_factor(step: int, config: TrainPriorConfig) -> float:
    """Linear warm-up then cosine decay to 10%."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def sample_grid(prior: PixelPrior, per_class: int, steps: int, guidance: float, seed: int = 0) -> torch.Tensor:
    """[H', W', 3] grid: one row per class of DDIM samples."""
    n_classes = len(prior.config.classes)
    cond = torch.arange(n_classes, device=prior.device).repeat_interleave(per_class)
    r = prior.config.resolution
    images = prior.sample(cond, (3, r, r), steps, guidance, torch.Generator().manual_seed(seed)).cpu()
    images = rearrange(images, "(k n) c h w -> k n h w c", k=n_classes)
    return image_grid([list(row) for row in images])


class PriorTrainer:
    """Denoising training of the pixel prior on rendered objects, with an EMA copy of the UNet; a
    `scene3d.train.Trainable`. With a run folder, `apply` writes sample grids every `sample_every` steps
    and `finish` the final grid and the EMA prior (`prior/`, diffusers' `save_pretrained`)."""

    name = "prior"

    def __init__(self, config: TrainPriorConfig, run: RunDir | None = None):
        self.config, self.run = config, run
        self.device = pick_device(config.device)
        data = render_objects(config.n_objects_per_class, config.views_per_object, config.prior.resolution,
                              seed=config.seed, classes=config.prior.classes, views=config.views)
        self.images, self.labels = data.images.to(self.device), data.labels.to(self.device)
        torch.manual_seed(config.seed)
        self.prior = PixelPrior(config.prior).to(self.device)
        self.model = self.prior.denoiser.train()
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(config.seed)

    def ema_prior(self) -> PixelPrior:
        return PixelPrior(self.config.prior, self.ema, self.prior.scheduler).to(self.device)

    def save_samples(self, run: RunDir, tag: str) -> None:
        """`samples_<tag>.png`: one row of EMA samples per class (the sampler has its own generator)."""
        c = self.config
        save_png(run.file(f"samples_{tag}.png"),
                 sample_grid(self.ema_prior(), c.samples_per_class, c.sample_steps, c.sample_guidance))

    # the Trainable protocol -----------------------------------------------------------------------
    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        """Step `step`: noise-prediction MSE on a batch of (flipped) renders, labels dropped to the null class."""
        c, prior, gen, device = self.config, self.prior, self.generator, self.device
        lr = c.lr * _lr_factor(step - 1, c)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(self.images), (c.batch_size,), generator=gen).to(device)
        x0 = prior.encode(self.images[idx])
        if c.hflip:
            flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        y = self.labels[idx]
        drop = (torch.rand(len(idx), generator=gen) < c.prior.label_drop).to(device)
        y = torch.where(drop, torch.full_like(y, prior.null_class), y)
        t = torch.randint(prior.num_timesteps, (len(idx),), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        loss = F.mse_loss(self.model(prior.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, {"loss": loss.item(), "lr": lr}

    def guarded_parameters(self):
        return self.model.named_parameters()

    def apply(self, step: int) -> dict[str, float]:
        """Clipping to norm 1, the optimizer step, the EMA update; a sample grid every `sample_every` steps."""
        c = self.config
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        done = step - 1
        decay = min(c.ema_decay, (1 + done) / (10 + done))
        with torch.no_grad():
            for pe, pm in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        if self.run is not None and c.sample_every and step % c.sample_every == 0 and step < c.steps:
            self.save_samples(self.run, f"{step:07d}")
        return {"grad_norm": float(grad_norm)}

    def validate(self) -> dict[str, float]:
        return {}

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        """With a run folder: `samples_final.png` and the EMA prior in `prior/`."""
        if run is None:
            return {}
        self.save_samples(run, "final")
        self.ema_prior().save_pretrained(run.path / "prior")
        return {"prior": str(run.path / "prior"), "samples": str(run.file("samples_final.png"))}

    def checkpoint_config(self) -> dict[str, Any]:
        return config_to_dict(self.config)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


def train_prior(config: TrainPriorConfig) -> RunDir:
    """Train to `config.steps` in `<output_root>/prior/<name>/` (resuming its latest checkpoint when
    `config.run.resume`); returns the run folder (`prior/` and `samples_final.png` once complete)."""
    run = config.run.open("prior", "objects32")
    fit(PriorTrainer(config, run), run, config.run, config.steps, job_config=config)
    return run
