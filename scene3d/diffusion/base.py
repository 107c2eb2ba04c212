"""One interface for diffusion priors used as 2D teachers of 3D scenes.

A prior works in its own model space `x` (pixels in [-1, 1] for pixel models, VAE latents scaled by
the VAE's `scaling_factor` for latent models). Conditions are tensors with the batch first (class
labels [B] for class-conditional models, text embeddings [B,L,D] for text models), so a conditional
and an unconditional batch are concatenated with `torch.cat` for classifier-free guidance.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.lora import add_lora


class DiffusionPrior(nn.Module, ABC):
    """An epsilon-prediction diffusion model with a discrete DDPM schedule of `num_timesteps` steps.

    Subclasses set `self.denoiser` (a diffusers UNet) and `self.scheduler` (a diffusers DDPM/DDIM
    scheduler) and implement the abstract methods. Parameters are frozen: guidances never train them.
    """

    latent: bool = False
    denoiser: nn.Module

    def __init__(self, scheduler) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def freeze(self) -> DiffusionPrior:
        self.requires_grad_(False)
        self.eval()
        return self

    # model space ---------------------------------------------------------------------------
    @abstractmethod
    def encode(self, images: Float[Tensor, "B 3 H W"]) -> Tensor:
        """Images in [0, 1] -> model space x (differentiable)."""

    @abstractmethod
    def decode(self, x: Tensor) -> Float[Tensor, "B 3 H W"]:
        """Model space -> images in [0, 1]."""

    # conditioning --------------------------------------------------------------------------
    @abstractmethod
    def condition(self, prompt: str, batch: int, views: list[str] | None = None) -> Tensor:
        """The condition for `prompt` (a class name or a text), repeated or per view for a batch."""

    @abstractmethod
    def null_condition(self, batch: int) -> Tensor:
        """The unconditional (classifier-free guidance) condition for a batch."""

    # denoising -----------------------------------------------------------------------------
    @abstractmethod
    def _forward(self, denoiser: nn.Module, x_t: Tensor, t: Tensor, cond: Tensor,
                 class_labels: Tensor | None = None) -> Tensor:
        """Run `denoiser` (the prior's UNet or a trainable copy of it) -> eps."""

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """eps_phi(x_t, t, cond): x_t [B,...], t [B] long in [0, num_timesteps)."""
        return self._forward(self.denoiser, x_t, t, cond)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        abar = self.alphas_cumprod[t].view(-1, *([1] * (x0.ndim - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def denoising_loss(self, x0: Tensor, cond: Tensor, t: Tensor | None = None, noise: Tensor | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """Per-sample epsilon MSE [B] of the prior on clean model-space samples x0."""
        b = len(x0)
        if t is None:
            t = torch.randint(0, self.num_timesteps, (b,), generator=generator).to(x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator).to(x0)
        eps = self.predict_noise(self.add_noise(x0, noise, t), t, cond)
        return (eps - noise).pow(2).flatten(1).mean(1)

    def make_estimator(self, camera_dim: int = 16, lora_rank: int = 4, lora_on: str = "attention") -> NoiseEstimator:
        """VSD's camera-conditioned estimator of the renders' score: LoRA adapters (rank `lora_rank`,
        on the attention layers or on every layer, `lora_on`) on a weight-sharing frozen copy of the
        denoiser, or a full trainable copy (`lora_rank=0`)."""
        return NoiseEstimator(self, camera_dim, lora_rank, lora_on)

    @torch.no_grad()
    def sample(self, cond: Tensor, shape: tuple[int, ...], steps: int = 50, guidance_scale: float = 1.0,
               generator: torch.Generator | None = None) -> Float[Tensor, "B 3 H W"]:
        """Deterministic DDIM sampling (eta = 0) with classifier-free guidance -> images in [0, 1]."""
        from diffusers import DDIMScheduler

        ddim = DDIMScheduler.from_config(self.scheduler.config)
        ddim.set_timesteps(steps)
        x = torch.randn((len(cond), *shape), generator=generator).to(self.device)
        null = self.null_condition(len(cond)).to(self.device)
        for t in ddim.timesteps:
            tt = torch.full((len(x),), int(t), device=self.device, dtype=torch.long)
            eps = cfg_noise(self, x, tt, cond, null, guidance_scale)
            x = ddim.step(eps, int(t), x).prev_sample
        return self.decode(x)


def cfg_noise(prior: DiffusionPrior, x_t: Tensor, t: Tensor, cond: Tensor, null: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance written out: eps_u + s (eps_c - eps_u), one batched model call."""
    if scale == 1.0:
        return prior.predict_noise(x_t, t, cond)
    eps = prior.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, null]))
    eps_cond, eps_uncond = eps.chunk(2)
    return eps_uncond + scale * (eps_cond - eps_uncond)


class _CameraClassEmbedding(nn.Module):
    """The UNet's class embedding plus a camera embedding (zero-initialised, so the copy starts
    equal to the prior). Input: [B, 1 + camera_dim] (class label, camera) or [B, camera_dim]."""

    def __init__(self, base: nn.Module | None, camera_dim: int, dim: int):
        super().__init__()
        self.base, self.camera_dim = base, camera_dim
        self.camera = nn.Sequential(nn.Linear(camera_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.camera[-1].weight)
        nn.init.zeros_(self.camera[-1].bias)

    def forward(self, packed: Tensor) -> Tensor:
        emb = self.camera(packed[:, -self.camera_dim:].float())
        if self.base is not None:
            emb = emb + self.base(packed[:, 0].round().long())
        return emb


def frozen_shared_copy(module: nn.Module) -> nn.Module:
    """A structural copy of `module` whose parameters share memory with the original's but are
    separate frozen leaves (unfreezing the original does not unfreeze the copy); buffers are shared."""
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in module.parameters()}
    memo.update({id(b): b for b in module.buffers()})
    return copy.deepcopy(module, memo)


# where VSD's LoRA goes: q, k, v, out of every attention (ProlificDreamer, threestudio) or every Linear and Conv2d
LORA_LAYERS = ("attention", "all")


class NoiseEstimator(nn.Module):
    """VSD's eps_psi(x_t, t, y, camera): the prior's denoiser with LoRA adapters (ProlificDreamer's
    choice; the frozen weights are shared with the prior) or, with `lora_rank=0`, a full trainable
    copy. Conditioned on the camera (c2w flattened, 16) through the class-embedding slot, as
    threestudio does: a zero-initialised MLP, so the estimator starts equal to the prior.
    `parameters(recurse)` includes the frozen shared weights; `trainable_parameters()` does not."""

    def __init__(self, prior: DiffusionPrior, camera_dim: int = 16, lora_rank: int = 4, lora_on: str = "attention"):
        super().__init__()
        if lora_on not in LORA_LAYERS:
            raise ValueError(f"lora_on must be one of {LORA_LAYERS}, got '{lora_on}'")
        self.prior_forward = prior._forward
        self.camera_dim, self.lora_rank = camera_dim, lora_rank
        dim = prior.denoiser.time_embedding.linear_2.out_features
        if lora_rank > 0:
            from diffusers.models.attention_processor import Attention

            self.denoiser = frozen_shared_copy(prior.denoiser)
            if lora_on == "attention":
                if not add_lora(self.denoiser, lora_rank, within=(Attention,)):
                    raise ValueError("the prior's denoiser has no attention layers for LoRA; use lora_on='all'")
            else:
                add_lora(self.denoiser, lora_rank, conv=True)
        else:
            self.denoiser = copy.deepcopy(prior.denoiser).requires_grad_(True)
        self.denoiser.train()
        self.denoiser.class_embedding = _CameraClassEmbedding(self.denoiser.class_embedding, camera_dim, dim)
        self.has_class = self.denoiser.class_embedding.base is not None

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor, camera: Tensor | None) -> Tensor:
        """eps_psi(x_t, t, cond, camera); camera [B, camera_dim] or None (the null camera, zeros)."""
        if camera is None:
            camera = torch.zeros(len(x_t), self.camera_dim, device=x_t.device)
        packed = torch.cat([cond.float()[:, None], camera], 1) if self.has_class else camera
        return self.prior_forward(self.denoiser, x_t, t, cond, class_labels=packed)
