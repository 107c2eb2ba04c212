"""Batched image augmentations of DINO's multi-crop recipe, in torch (no torchvision): random resized
crops with horizontal flips, colour jitter, random greyscale, Gaussian blur and solarisation. Every
function takes images [B, 3, H, W] in [0, 1] and a `torch.Generator`, and draws per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's greyscale


def uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    """[n] draws uniform in [low, high)."""
    return low + (high - low) * torch.rand(n, generator=generator)


def chance(n: int, p: float, generator: torch.Generator) -> Tensor:
    """[n] bools, each True with probability p."""
    return torch.rand(n, generator=generator) < p


def random_resized_crop(
    images: Float[Tensor, "B 3 H W"], size: int, scale: tuple[float, float], generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: float = 0.5,
) -> Float[Tensor, "B 3 size size"]:
    """A crop of `scale` of the image's area and aspect ratio in `ratio` (log-uniform) per image, inside the
    image, resized to size x size (bilinear, antialiased by sampling a 2x finer grid), flipped left-right with
    probability `flip`."""
    b = images.shape[0]
    area = uniform(b, *scale, generator)
    aspect = torch.exp(uniform(b, math.log(ratio[0]), math.log(ratio[1]), generator))
    half_w = (area * aspect).sqrt().clamp(max=1.0)  # half sides in [-1, 1] image coordinates
    half_h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (1 - half_w) * (2 * torch.rand(b, generator=generator) - 1)
    cy = (1 - half_h) * (2 * torch.rand(b, generator=generator) - 1)
    sign = torch.where(chance(b, flip, generator), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = half_w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = half_h, cy
    grid = F.affine_grid(theta.to(images), [b, 3, 2 * size, 2 * size], align_corners=False)
    fine = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.avg_pool2d(fine, 2)


def greyscale(images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 1 H W"]:
    return torch.einsum("bchw,c->bhw", images, images.new_tensor(LUMA))[:, None]


def colour_jitter(
    images: Float[Tensor, "B 3 H W"], generator: torch.Generator, p: float = 0.8, brightness: float = 0.4,
    contrast: float = 0.4, saturation: float = 0.2, hue: float = 0.1,
) -> Float[Tensor, "B 3 H W"]:
    """With probability p: brightness, contrast and saturation factors in [1 - x, 1 + x] and a hue rotation of
    up to +-hue turns (in YIQ), in that order, clamped to [0, 1] after each (DINO's ColorJitter(0.4, 0.4, 0.2,
    0.1) with p 0.8; torchvision shuffles the order, here it is fixed)."""
    b = images.shape[0]
    apply = chance(b, p, generator).view(b, 1, 1, 1)
    factors = [uniform(b, 1 - x, 1 + x, generator).view(b, 1, 1, 1) for x in (brightness, contrast, saturation)]
    turn = uniform(b, -hue, hue, generator) * 2 * math.pi
    x = (images * factors[0]).clamp(0, 1)
    mean = greyscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + factors[1] * (x - mean)).clamp(0, 1)
    x = (greyscale(x) + factors[2] * (x - greyscale(x))).clamp(0, 1)
    to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    cos, sin = turn.cos(), turn.sin()
    rotate = torch.zeros(b, 3, 3, dtype=images.dtype)
    rotate[:, 0, 0] = 1
    rotate[:, 1, 1], rotate[:, 1, 2], rotate[:, 2, 1], rotate[:, 2, 2] = cos, -sin, sin, cos
    matrix = torch.linalg.inv(to_yiq) @ rotate @ to_yiq  # [B, 3, 3]
    x = torch.einsum("bij,bjhw->bihw", matrix, x).clamp(0, 1)
    return torch.where(apply, x, images)


def random_greyscale(images: Float[Tensor, "B 3 H W"], generator: torch.Generator, p: float = 0.2) -> Tensor:
    apply = chance(images.shape[0], p, generator).view(-1, 1, 1, 1)
    return torch.where(apply, greyscale(images).expand_as(images), images)


def gaussian_blur(
    images: Float[Tensor, "B 3 H W"], generator: torch.Generator, p: float, sigma: tuple[float, float],
) -> Float[Tensor, "B 3 H W"]:
    """With probability p a Gaussian blur of sigma uniform in `sigma` pixels (reflect padding, radius 3 sigma)."""
    b, c, h, w = images.shape
    s = uniform(b, *sigma, generator)
    radius = max(1, math.ceil(3 * sigma[1]))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / s[:, None]) ** 2)
    kernel = kernel / kernel.sum(-1, keepdim=True)  # [B, K]
    kernel = kernel.repeat_interleave(c, 0)  # one kernel per (image, channel)
    x = rearrange(images, "b c h w -> 1 (b c) h w")
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel[:, None, None, :], groups=b * c)
    x = F.conv2d(x, kernel[:, None, :, None], groups=b * c)
    blurred = rearrange(x, "1 (b c) h w -> b c h w", b=b)
    return torch.where(chance(b, p, generator).view(b, 1, 1, 1), blurred, images)


def solarize(images: Float[Tensor, "B 3 H W"], generator: torch.Generator, p: float) -> Tensor:
    """With probability p, invert every value at or above 0.5 (PIL's solarize at 128)."""
    apply = chance(images.shape[0], p, generator).view(-1, 1, 1, 1)
    return torch.where(apply & (images >= 0.5), 1 - images, images)
