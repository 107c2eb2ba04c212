"""Scene-relative 2D rotary position embeddings (SR-RoPE, CanViT §4).

Positions are scene coordinates (y, x) in [-1, 1]^2 (`avfm.coords`): canvas cells sit at grid(G),
glimpse patches at center + s * grid(g). With n = head_dim / 4 frequencies of periods
base ** (arange(n) / n) (base 100), a token at (y, x) gets angles 2*pi*y/period (n of them) and
2*pi*x/period (n of them); these 2n angles are tiled twice and applied rotate-half style, so channel
i pairs with channel i + head_dim/2. Prefix tokens (VPE, CLS, registers) are never rotated.
Everything is computed in fp32 and cast back to the input dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor


class RoPE(NamedTuple):
    """sin and cos tables, [B, 1, N, head_dim], fp32, for N rotated (non-prefix) tokens."""

    sin: Tensor
    cos: Tensor


def rope_periods(head_dim: int, base: float = 100.0, device=None) -> Float[Tensor, " n"]:
    """Periods base ** (arange(n) / n) with n = head_dim / 4, in fp32 (from 1 up to base)."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    n = head_dim // 4
    return base ** (torch.arange(n, device=device, dtype=torch.float32) / n)


def compute_rope(positions: Float[Tensor, "B N 2"], periods: Float[Tensor, " n"]) -> RoPE:
    """sin/cos of the angles 2*pi*pos/period: y half then x half, tiled twice over head_dim = 4n."""
    angles = 2 * math.pi * positions.float()[..., None] / periods.float()  # [B, N, 2, n]
    angles = rearrange(angles, "b n two f -> b 1 n (two f)").repeat(1, 1, 1, 2)
    return RoPE(torch.sin(angles), torch.cos(angles))


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Float[Tensor, "B H N D"], rope: RoPE) -> Float[Tensor, "B H N D"]:
    """Rotate the last N_rope tokens of x; the first N - N_rope (the prefix) pass through unchanged."""
    n_prefix = x.shape[2] - rope.sin.shape[2]
    if n_prefix < 0:
        raise ValueError(f"RoPE covers {rope.sin.shape[2]} tokens but x has only {x.shape[2]}")
    prefix, tokens = x[:, :, :n_prefix], x[:, :, n_prefix:].float()
    rotated = tokens * rope.cos + rotate_half(tokens) * rope.sin
    return torch.cat([prefix, rotated.to(x.dtype)], dim=2)
