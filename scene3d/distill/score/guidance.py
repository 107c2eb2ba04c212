"""Score-distillation guidances: a frozen 2D diffusion prior teaches a differentiable renderer.

Every guidance maps renders x [B,3,H,W] in [0,1] (encoded to the prior's space, pixels or latents)
to a gradient g on the encoded x and the surrogate loss 0.5 * ||x - (x - g).detach()||^2 / B whose
gradient w.r.t. x is g / B. The prior runs under `torch.no_grad`: nothing flows into its weights.

- `sds` (DreamFusion, Poole et al. 2022): g = w(t) (eps_hat(x_t, t, y) - eps).
- `vsd` (ProlificDreamer, Wang et al. 2023): g = (1 - abar_t) (eps_hat(x_t, t, y) - eps_psi(x_t, t, y, c)),
  eps_psi a trainable estimator of the renders' own score, fitted on detached renders every step.
- `ism` (LucidDreamer, Liang et al. 2023): DDIM-invert x0 -> x_s -> x_t with the unconditional
  model; g = sqrt((1 - abar_t) / abar_t) (eps_hat(x_t, t, y) - eps_phi(x_s, s, null)).
- `tsm` (Dreamer XL, Miao et al. 2024): from x_s two inversion paths, to x_t and to an intermediate
  x_mu, mu = s + (t - s) sqrt(1 - gamma^2); g = sqrt((1-abar_t)/abar_t) (eps_hat(x_t,t,y) - eps_phi(x_mu,mu,null)).
  gamma = 1 is ISM.

eps_hat is classifier-free guidance written out: eps_u + s (eps_c - eps_u).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.diffusion.base import DiffusionPrior, cfg_noise

WEIGHTINGS = ("sds", "uniform", "fantasia3d")


@dataclass
class GuidanceConfig:
    """Shared settings. Timesteps are fractions of the prior's schedule; the upper bound of the
    sampled t is annealed linearly from `t_max` to `t_max_end` over `anneal_steps` (0: no annealing)."""

    guidance_scale: float = 7.5
    t_min: float = 0.02
    t_max: float = 0.98
    t_max_end: float = 0.98
    anneal_steps: int = 0
    weighting: str = "sds"  # sds: 1 - abar; uniform: 1; fantasia3d: sqrt(abar) (1 - abar)   (SDS only)
    grad_clip: float | None = None  # clamp |g| elementwise
    grad_scale: float = 1.0


@dataclass
class VSDConfig(GuidanceConfig):
    """ProlificDreamer (threestudio's prolificdreamer): CFG 7.5, a LoRA estimator of rank 4 on the
    denoiser's attention layers (q, k, v, out) at lr 1e-4, camera condition dropped with probability
    0.1. `lora_on="all"` puts it on every Linear and Conv2d; `lora_rank=0` trains a full copy."""

    lora_rank: int = 4
    lora_on: str = "attention"  # attention | all (scene3d.diffusion.base.LORA_LAYERS)
    estimator_lr: float = 1e-4
    camera_drop: float = 0.1
    estimator_steps: int = 1  # estimator updates per guidance step


@dataclass
class ISMConfig(GuidanceConfig):
    """LucidDreamer defaults: t in [0.02, 0.5] after annealing the upper bound down from 0.98,
    interval delta_t 80 (annealed from 100), x_s reached in 5 inversion steps of 200."""

    t_max_end: float = 0.5
    delta_t: int = 80
    delta_t_start: int = 100
    xs_delta_t: int = 200
    xs_inv_steps: int = 5
    inversion_guidance_scale: float = 1.0  # the inversion's own CFG; 1 = unconditional only


@dataclass
class TSMConfig(ISMConfig):
    """Dreamer XL: gamma 0.3; pixel-wise render-gradient clipping 0.05 for Gaussian targets."""

    gamma: float = 0.3
    pixel_grad_clip: float | None = 0.05


@dataclass
class GuidanceOutput:
    loss: Tensor  # the surrogate loss (plus the estimator's own loss for VSD)
    grad: Tensor  # g on the encoded renders x, [B, C, h, w]
    x: Tensor  # the encoded renders (part of the graph)
    t: Tensor  # [B] long
    extras: dict[str, float] = field(default_factory=dict)


def surrogate_loss(x: Tensor, grad: Tensor) -> Tensor:
    """0.5 * ||x - (x - g).detach()||^2 / B: its gradient w.r.t. x is g / B."""
    target = (x - grad).detach()
    return 0.5 * (x - target).pow(2).sum() / len(x)


def camera_features(cameras) -> Float[Tensor, "B 16"]:
    """The camera condition of VSD's estimator: c2w flattened (threestudio's choice)."""
    return cameras.c2w.reshape(len(cameras.c2w), 16)


def clip_pixel_gradients(images: Tensor, max_norm: float) -> Tensor:
    """Dreamer XL's pixel-by-pixel gradient clipping: in the backward pass, each pixel's gradient
    vector (over channels) of `images` [B,C,H,W] is scaled to norm <= max_norm. Identity forward."""
    if images.requires_grad:
        def hook(g: Tensor) -> Tensor:
            norm = g.norm(dim=1, keepdim=True)
            return g * (max_norm / norm.clamp_min(max_norm))
        images.register_hook(hook)
    return images


class Guidance(nn.Module):
    """Base: timestep sampling, weighting, nan-guard/clipping and the surrogate loss."""

    config_class: type[GuidanceConfig] = GuidanceConfig

    def __init__(self, prior: DiffusionPrior, config: GuidanceConfig | None = None):
        super().__init__()
        self.prior = prior.freeze()
        self.config = config or self.config_class()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return []

    def t_bounds(self, step: int) -> tuple[int, int]:
        c, n = self.config, self.prior.num_timesteps
        frac = 0.0 if c.anneal_steps <= 0 else min(step / c.anneal_steps, 1.0)
        upper = c.t_max + (c.t_max_end - c.t_max) * frac
        lo, hi = int(c.t_min * n), int(upper * n)
        return lo, max(hi, lo + 1)

    def sample_t(self, batch: int, step: int, generator: torch.Generator | None = None) -> Tensor:
        lo, hi = self.t_bounds(step)
        return torch.randint(lo, hi, (batch,), generator=generator).to(self.prior.device)

    def abar(self, t: Tensor, like: Tensor) -> Tensor:
        return self.prior.alphas_cumprod[t].view(-1, *([1] * (like.ndim - 1)))

    def finish(self, x: Tensor, grad: Tensor, t: Tensor, extras: dict | None = None) -> GuidanceOutput:
        grad = torch.nan_to_num(grad * self.config.grad_scale, nan=0.0, posinf=0.0, neginf=0.0)
        if self.config.grad_clip is not None:
            grad = grad.clamp(-self.config.grad_clip, self.config.grad_clip)
        extras = {"grad_norm": float(grad.flatten(1).norm(dim=1).mean()), "t": float(t.float().mean()),
                  **(extras or {})}
        return GuidanceOutput(surrogate_loss(x, grad), grad, x, t, extras)

    def forward(self, images: Float[Tensor, "B 3 H W"], cond: Tensor, null: Tensor, step: int = 0,
                cameras=None, t: Tensor | None = None, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> GuidanceOutput:
        x = self.prior.encode(images)
        if t is None:
            t = self.sample_t(len(x), step, generator)
        if noise is None:
            noise = torch.randn(x.shape, generator=generator).to(x)
        return self.guide(x, cond, null, t, noise, step, cameras, generator)

    def guide(self, x, cond, null, t, noise, step, cameras, generator) -> GuidanceOutput:
        raise NotImplementedError


class SDS(Guidance):
    config_class = GuidanceConfig

    def weight(self, abar: Tensor) -> Tensor:
        w = self.config.weighting
        if w == "sds":
            return 1 - abar
        if w == "uniform":
            return torch.ones_like(abar)
        if w == "fantasia3d":
            return abar.sqrt() * (1 - abar)
        raise ValueError(f"unknown weighting '{w}'; choose from {WEIGHTINGS}")

    def guide(self, x, cond, null, t, noise, step, cameras, generator):
        with torch.no_grad():
            x_t = self.prior.add_noise(x.detach(), noise, t)
            eps_hat = cfg_noise(self.prior, x_t, t, cond, null, self.config.guidance_scale)
        return self.finish(x, self.weight(self.abar(t, x)) * (eps_hat - noise), t)


class VSD(Guidance):
    """Variational score distillation with a camera-conditioned estimator of the renders' score
    (LoRA on the prior or a full copy; see NoiseEstimator). Particles are the batch."""

    config_class = VSDConfig

    def __init__(self, prior: DiffusionPrior, config: VSDConfig | None = None):
        super().__init__(prior, config)
        self.estimator = prior.make_estimator(lora_rank=self.config.lora_rank, lora_on=self.config.lora_on)
        self.optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=self.config.estimator_lr)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.estimator.parameters() if p.requires_grad]

    def camera(self, cameras, batch: int, device) -> Tensor | None:
        return None if cameras is None else camera_features(cameras).to(device)

    def guide(self, x, cond, null, t, noise, step, cameras, generator):
        camera = self.camera(cameras, len(x), x.device)
        with torch.no_grad():
            x_t = self.prior.add_noise(x.detach(), noise, t)
            eps_pre = cfg_noise(self.prior, x_t, t, cond, null, self.config.guidance_scale)
            eps_est = self.estimator(x_t, t, cond, camera)
        out = self.finish(x, (1 - self.abar(t, x)) * (eps_pre - eps_est), t)
        out.extras["estimator_loss"] = self.train_estimator(x.detach(), cond, camera, generator)
        return out

    def train_estimator(self, x0: Tensor, cond: Tensor, camera: Tensor | None, generator=None) -> float:
        """Fit eps_psi to the current renders: t ~ U[0, T), camera dropped with prob `camera_drop`."""
        total = 0.0
        for _ in range(self.config.estimator_steps):
            t = torch.randint(0, self.prior.num_timesteps, (len(x0),), generator=generator).to(x0.device)
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            cam = camera
            if cam is not None:
                keep = (torch.rand(len(x0), generator=generator) >= self.config.camera_drop).to(x0.device)
                cam = cam * keep[:, None]
            loss = (self.estimator(self.prior.add_noise(x0, noise, t), t, cond, cam) - noise).pow(2).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach())
        return total / max(1, self.config.estimator_steps)


class ISM(Guidance):
    """Interval score matching. Inversion uses the unconditional model (CFG `inversion_guidance_scale`)."""

    config_class = ISMConfig

    def delta_t(self, step: int) -> int:
        c = self.config
        frac = 1.0 if c.anneal_steps <= 0 else min(step / c.anneal_steps, 1.0)
        return int(round(c.delta_t_start + (c.delta_t - c.delta_t_start) * frac))

    def eps_inv(self, x: Tensor, t: Tensor, cond: Tensor, null: Tensor) -> Tensor:
        """The inversion's noise prediction: unconditional when `inversion_guidance_scale` is 1."""
        scale = self.config.inversion_guidance_scale
        return self.prior.predict_noise(x, t, null) if scale == 1.0 else cfg_noise(self.prior, x, t, cond, null, scale)

    def inversion_step(self, x: Tensor, eps: Tensor, cur: Tensor, nxt: Tensor) -> Tensor:
        """Deterministic DDIM step from timestep `cur` up to `nxt` with the model's eps at (x, cur)."""
        a_cur, a_nxt = self.abar(cur, x), self.abar(nxt, x)
        x0 = (x - (1 - a_cur).sqrt() * eps) / a_cur.sqrt()
        return a_nxt.sqrt() * x0 + (1 - a_nxt).sqrt() * eps

    def invert_to_s(self, x0: Tensor, noise: Tensor, s: Tensor, cond: Tensor, null: Tensor):
        """x0 -> x_s in `xs_inv_steps` inversion steps of `xs_delta_t` (start: x0 noised to the start
        index, as LucidDreamer does)."""
        c = self.config
        cur = (s - c.xs_delta_t * c.xs_inv_steps).clamp_min(0)
        x = self.prior.add_noise(x0, noise, cur)
        for _ in range(c.xs_inv_steps):
            nxt = torch.minimum(cur + c.xs_delta_t, s)
            x = self.inversion_step(x, self.eps_inv(x, cur, cond, null), cur, nxt)
            cur = nxt
        return x

    def interval(self, t: Tensor, step: int) -> Tensor:
        return (t - self.delta_t(step)).clamp_min(0)

    def sample_t(self, batch, step, generator=None):
        lo, hi = self.t_bounds(step)
        lo = max(lo, self.delta_t(step))
        return torch.randint(lo, max(hi, lo + 1), (batch,), generator=generator).to(self.prior.device)

    def weight(self, t: Tensor, like: Tensor) -> Tensor:
        abar = self.abar(t, like)
        return ((1 - abar) / abar).sqrt()

    def targets(self, x0, cond, null, t, noise, step):
        """(x_t, target eps) of ISM: target = eps_phi(x_s, s, null), x_t one inversion step further."""
        s = self.interval(t, step)
        x_s = self.invert_to_s(x0, noise, s, cond, null)
        eps_s = self.eps_inv(x_s, s, cond, null)
        return self.inversion_step(x_s, eps_s, s, t), eps_s, {"s": float(s.float().mean())}

    def guide(self, x, cond, null, t, noise, step, cameras, generator):
        with torch.no_grad():
            x_t, target, extras = self.targets(x.detach(), cond, null, t, noise, step)
            eps_hat = cfg_noise(self.prior, x_t, t, cond, null, self.config.guidance_scale)
        return self.finish(x, self.weight(t, x) * (eps_hat - target), t, extras)


class TSM(ISM):
    """Trajectory score matching: two inversion paths from x_s (to x_t, and to x_mu)."""

    config_class = TSMConfig

    def targets(self, x0, cond, null, t, noise, step):
        s = self.interval(t, step)
        x_s = self.invert_to_s(x0, noise, s, cond, null)
        eps_s = self.eps_inv(x_s, s, cond, null)
        mu = torch.round(s + (t - s) * math.sqrt(1 - self.config.gamma**2)).long()
        x_mu = self.inversion_step(x_s, eps_s, s, mu)
        eps_mu = self.eps_inv(x_mu, mu, cond, null)
        return self.inversion_step(x_s, eps_s, s, t), eps_mu, {"s": float(s.float().mean()),
                                                                 "mu": float(mu.float().mean())}


GUIDANCES: dict[str, type[Guidance]] = {"sds": SDS, "vsd": VSD, "ism": ISM, "tsm": TSM}


def make_guidance(name: str, prior: DiffusionPrior, **overrides) -> Guidance:
    """Build a registered guidance with its default config, fields overridden by keyword."""
    if name not in GUIDANCES:
        raise ValueError(f"unknown guidance '{name}'; choose from {sorted(GUIDANCES)}")
    cls = GUIDANCES[name]
    return cls(prior, cls.config_class(**overrides))
