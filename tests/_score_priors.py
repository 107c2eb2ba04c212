"""Test doubles for score distillation: an exact Gaussian prior and its VSD estimator."""

import torch
from torch import nn

from scene3d.diffusion import DiffusionPrior


class GaussianPrior(DiffusionPrior):
    """Exact denoiser of N(mu, sigma^2 I) data (a test double with a learnable-looking parameter)."""

    def __init__(self, mu: torch.Tensor, sigma: float):
        from diffusers import DDPMScheduler

        super().__init__(DDPMScheduler(beta_schedule="squaredcos_cap_v2"))
        self.denoiser = nn.Module()
        self.denoiser.mu = nn.Parameter(mu)
        self.sigma = sigma
        self.freeze()

    def encode(self, images):
        return images * 2 - 1

    def decode(self, x):
        return (x + 1) / 2

    def condition(self, prompt, batch, views=None):
        return torch.zeros(batch, dtype=torch.long)

    def null_condition(self, batch):
        return torch.zeros(batch, dtype=torch.long)

    def _forward(self, denoiser, x_t, t, cond, class_labels=None):
        return gaussian_eps(self.alphas_cumprod[t].view(-1, 1, 1, 1), x_t, denoiser.mu, self.sigma)

    def make_estimator(self, camera_dim=16, lora_rank=0, lora_on="attention"):
        return GaussianEstimator(self)


def gaussian_eps(a, x_t, mu, sigma):
    """E[eps | x_t] for x_0 ~ N(mu, sigma^2 I)."""
    return (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * sigma**2 + 1 - a)


class GaussianEstimator(nn.Module):
    """VSD's estimator in the same family: a Gaussian with learnable mean and scale (camera ignored)."""

    def __init__(self, prior):
        super().__init__()
        self.alphas_cumprod = prior.alphas_cumprod
        self.mu = nn.Parameter(torch.zeros_like(prior.denoiser.mu))
        self.log_sigma = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, cond, camera):
        return gaussian_eps(self.alphas_cumprod[t].view(-1, 1, 1, 1), x_t, self.mu, self.log_sigma.exp())
