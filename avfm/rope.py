"""Scene-relative 2D rotary position embeddings (SR-RoPE, CanViT §4).

Positions are scene coordinates (y, x) in [-1, 1]^2 (`avfm.coords`): canvas cells sit at grid(G),
glimpse patches at center + s * grid(g). With n = head_dim / 4 frequencies of periods
base ** (arange(n) / n) (base 100), a token at (y, x) gets angles 2*pi*y/period (n of them) and
2*pi*x/period (n of them); these 2n angles are applied rotate-half style (tiled twice over the
head), so channel i pairs with channel i + head_dim/2. Prefix tokens (VPE, CLS, registers) are never
rotated. Everything is computed in fp32 and cast back to the input dtype.

`apply_rope` takes tables of the rotated tokens only; tables that cover every token (the prefix given
identity rows once, `pad_rope`) take `rotate`: four ops into one output and a single autograd node whose
backward is the inverse rotation (`CanViT.step` pads its tables once per glimpse for this).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor


class RoPE(NamedTuple):
    """sin and cos of the 2n = head_dim / 2 angles, [B, 1, N, head_dim / 2], fp32, for the N rotated
    (non-prefix) tokens. The full tables are these tiled twice (channel i pairs with i + head_dim / 2)."""

    sin: Tensor
    cos: Tensor


def rope_periods(head_dim: int, base: float = 100.0, device=None) -> Float[Tensor, " n"]:
    """Periods base ** (arange(n) / n) with n = head_dim / 4, in fp32 (from 1 up to base)."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    n = head_dim // 4
    return base ** (torch.arange(n, device=device, dtype=torch.float32) / n)


def compute_rope(positions: Float[Tensor, "B N 2"], periods: Float[Tensor, " n"]) -> RoPE:
    """sin/cos of the angles 2*pi*pos/period: the n y-angles then the n x-angles."""
    angles = 2 * math.pi * positions.float()[..., None] / periods.float()  # [B, N, 2, n]
    angles = rearrange(angles, "b n two f -> b 1 n (two f)")
    return RoPE(torch.sin(angles), torch.cos(angles))


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope_reference(x: Float[Tensor, "B H N D"], rope: RoPE) -> Float[Tensor, "B H N D"]:
    """The textbook form x * cos + rotate_half(x) * sin with tiled tables; prefix tokens copied."""
    n_prefix = x.shape[2] - rope.sin.shape[2]
    sin, cos = rope.sin.repeat(1, 1, 1, 2), rope.cos.repeat(1, 1, 1, 2)
    tokens = x[:, :, n_prefix:].float()
    rotated = tokens * cos + rotate_half(tokens) * sin
    return torch.cat([x[:, :, :n_prefix], rotated.to(x.dtype)], dim=2)


def pad_rope(rope: RoPE, n_prefix: int) -> RoPE:
    """Tables for n_prefix more leading tokens, left unrotated (sin 0, cos 1): [B, 1, n_prefix + N, d/2]."""
    pad = (0, 0, n_prefix, 0)
    return RoPE(F.pad(rope.sin, pad, value=0.0), F.pad(rope.cos, pad, value=1.0))


def rotate_into(x: Float[Tensor, "... d"], rope: RoPE, out: Tensor, sign: float = 1.0) -> Tensor:
    """out = RoPE(x), the tables broadcast against x[..., :d/2]; sign -1 rotates back. `out` must not alias x."""
    sin, cos = rope
    h = x.shape[-1] // 2
    x0, x1, o0, o1 = x[..., :h], x[..., h:], out[..., :h], out[..., h:]
    torch.mul(x0, cos, out=o0).addcmul_(x1, sin, value=-sign)
    torch.mul(x1, cos, out=o1).addcmul_(x0, sin, value=sign)
    return out


class _Rotate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
        ctx.save_for_backward(sin, cos)
        return rotate_into(x, RoPE(sin, cos), torch.empty_like(x, dtype=torch.float32)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        out = torch.empty_like(grad, dtype=torch.float32)
        return rotate_into(grad, RoPE(*ctx.saved_tensors), out, -1.0).to(grad.dtype), None, None


def rotate(x: Float[Tensor, "... d"], rope: RoPE) -> Float[Tensor, "... d"]:
    """RoPE(x) with tables covering every token of x (broadcast against x[..., :d/2]), differentiable."""
    return _Rotate.apply(x, rope.sin, rope.cos)


def apply_rope(x: Float[Tensor, "B H N D"], rope: RoPE) -> Float[Tensor, "B H N D"]:
    """Rotate the last N_rope tokens of x; the first N - N_rope (the prefix) pass through unchanged.

    Same result as `apply_rope_reference`, without tiling the tables or slicing x: the prefix gets
    identity rows (cos 1, sin 0) in the small tables instead. Tables covering all N tokens go to `rotate`."""
    n_prefix = x.shape[2] - rope.sin.shape[2]
    if n_prefix < 0:
        raise ValueError(f"RoPE covers {rope.sin.shape[2]} tokens but x has only {x.shape[2]}")
    if n_prefix == 0:
        return rotate(x, rope)
    sin, cos = pad_rope(rope, n_prefix)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
