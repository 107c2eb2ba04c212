"""Train the pixel-space class-conditional prior on renders of single synthetic objects.

    run = train_prior(TrainPriorConfig(steps=2000))   # outputs/prior/<name>/

Writes config, TensorBoard + scalars.jsonl, rotating atomic checkpoints (model, EMA, optimizer,
RNG, step: resuming continues bit-exactly), sample grids `samples_<step>.png` (one row per class)
and the final EMA prior with diffusers' `save_pretrained` in `<run>/prior/`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm import tqdm

from scene3d.checkpoint import restoring
from scene3d.device import pick_device
from scene3d.diffusion.data import ObjectViews, render_objects
from scene3d.diffusion.pixel import PixelPrior, PixelPriorConfig
from scene3d.guard import FiniteGuard
from scene3d.runs import RunDir
from scene3d.viz import image_grid, save_png


@dataclass
class TrainPriorConfig:
    """Defaults train a recognisable 32x32 prior in minutes on 2 CPU cores; `--prior.*` sets the UNet."""

    name: str = "objects32"
    root: Path = Path("outputs")
    prior: PixelPriorConfig = field(default_factory=PixelPriorConfig)
    views: ObjectViews = field(default_factory=ObjectViews)
    n_objects_per_class: int = 128
    views_per_object: int = 8
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.99
    hflip: bool = True
    log_every: int = 25
    checkpoint_every: int = 500
    sample_every: int = 500
    samples_per_class: int = 8
    sample_steps: int = 50
    sample_guidance: float = 2.0
    stop_after: int = 0  # stop (with a checkpoint) after this many steps in this invocation; 0 = run to `steps`
    seed: int = 0
    device: str = "auto"  # auto = cuda when available
    nonfinite: str = "stop"  # NaN / inf loss, gradient or parameter: "stop" (naming step and tensor) or "skip"


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


def train_prior(config: TrainPriorConfig, run: RunDir | None = None) -> RunDir:
    run = run or RunDir.create("prior", config.name, root=config.root)
    run.save_config(config)
    device = pick_device(config.device)
    data = render_objects(config.n_objects_per_class, config.views_per_object, config.prior.resolution,
                          seed=config.seed, classes=config.prior.classes, views=config.views)
    images, labels = data.images.to(device), data.labels.to(device)

    torch.manual_seed(config.seed)
    prior = PixelPrior(config.prior).to(device)
    model = prior.denoiser.train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    step = 0
    resumed = run.load_latest()
    if resumed is not None:
        state, _ = resumed
        with restoring(run.latest_checkpoint(), "state"):
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            step = int(state["step"])

    def checkpoint() -> None:
        run.save_checkpoint(step, {"model": model.state_dict(), "ema": ema.state_dict(),
                                   "optimizer": opt.state_dict(), "generator": gen.get_state()}, config)

    def sample_png(tag: str) -> None:
        ema_prior = PixelPrior(config.prior, ema, prior.scheduler).to(device)
        save_png(run.file(f"samples_{tag}.png"),
                 sample_grid(ema_prior, config.samples_per_class, config.sample_steps, config.sample_guidance))

    last = config.steps if config.stop_after <= 0 else min(config.steps, step + config.stop_after)
    guard = FiniteGuard(config.nonfinite, run.path / "checkpoints")
    bar = tqdm(total=config.steps, initial=step, desc="prior", dynamic_ncols=True)
    while step < last:
        for group in opt.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config)
        idx = torch.randint(len(images), (config.batch_size,), generator=gen).to(device)
        x0 = prior.encode(images[idx])
        if config.hflip:
            flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        y = labels[idx]
        drop = (torch.rand(len(idx), generator=gen) < config.prior.label_drop).to(device)
        y = torch.where(drop, torch.full_like(y, prior.null_class), y)
        t = torch.randint(prior.num_timesteps, (len(idx),), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        loss = F.mse_loss(model(prior.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
        opt.zero_grad(set_to_none=True)
        grad_norm = torch.zeros(())
        if guard.loss(step + 1, loss):
            loss.backward()
            if guard.gradients(step + 1, model.named_parameters()):
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                decay = min(config.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                        pe.lerp_(pm, 1 - decay)
            guard.parameters(step + 1, model.named_parameters())
        step += 1
        bar.update(1)
        if step % config.log_every == 0 or step == config.steps:
            run.log_scalars(step, {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": opt.param_groups[0]["lr"]})
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % config.checkpoint_every == 0 or step == last:
            checkpoint()
        if config.sample_every and step % config.sample_every == 0 and step < config.steps:
            sample_png(f"{step:07d}")
    bar.close()
    if step < config.steps:
        run.close()
        return run
    sample_png("final")
    PixelPrior(config.prior, ema, prior.scheduler).save_pretrained(run.path / "prior")
    run.close()
    return run
