"""A pre-LN ViT with 2D RoPE and LayerScale (DINOv3-style): the CanViT backbone's blocks, the
seeded random teacher, the small trained teacher and the passive baseline of the benchmark.

Token layout everywhere: [prefix tokens (CLS, registers, ...), patches]; only patches are rotated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from avfm.attention import from_heads, rope_attention, to_heads
from avfm.coords import flat_grid
from avfm.rope import RoPE, compute_rope, rope_periods, rotate


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D: [B, 3, H, W] -> ([B, h*w, D], h, w)."""

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return rearrange(x, "b d h w -> b (h w) d"), h, w


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class SelfAttention(nn.Module):
    """Multi-head self-attention with RoPE. As DINOv3, the fused qkv bias applies to q and v only: its
    k third is stored (checkpoints keep the plain fused Linear) but masked to zero in every forward."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("qkv_bias_mask", torch.ones(3 * dim).index_fill_(0, torch.arange(dim, 2 * dim), 0.0),
                             persistent=False)

    def forward(self, x: Float[Tensor, "B N D"], rope: RoPE) -> Float[Tensor, "B N D"]:
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias * self.qkv_bias_mask)
        if rope.sin.shape[2] < x.shape[1]:  # tables of the patches only: prefix tokens pass unrotated
            q, k, v = (to_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))
            return self.proj(from_heads(rope_attention(q, k, v, rope, rope)))
        # tables over every token: q and k rotated together, one fused pass
        qkv = rearrange(qkv, "b n (three h d) -> b n three h d", three=3, h=self.heads)
        qk = rotate(qkv[:, :, :2], RoPE(*(rearrange(t, "b 1 n f -> b n 1 1 f") for t in rope)))
        q, k, v = (rearrange(t, "b n h d -> b h n d") for t in (*qk.unbind(2), qkv[:, :, 2]))
        return self.proj(from_heads(F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))))


class Block(nn.Module):
    """x + LS(attn(LN(x))), then x + LS(MLP(LN(x)))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, layerscale_init: float = 1e-5):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ls1 = LayerScale(dim, layerscale_init)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.ls2 = LayerScale(dim, layerscale_init)

    def forward(self, x: Tensor, rope: RoPE) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


def init_vit_weights(module: nn.Module) -> None:
    """trunc_normal(0.02) Linear weights, zero biases (as DINOv3); LayerScale keeps its init."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@dataclass
class ViTConfig:
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    patch_size: int = 8
    registers: int = 0
    layerscale_init: float = 1e-5
    rope_base: float = 100.0
    final_norm: bool = True


class ViT(nn.Module):
    """Passive ViT over a whole image: returns (patch tokens [B, h*w, D], CLS [B, D])."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.dim) / math.sqrt(cfg.dim))
        self.registers = nn.Parameter(torch.randn(1, cfg.registers, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(
            [Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.layerscale_init) for _ in range(cfg.depth)]
        )
        self.norm = nn.LayerNorm(cfg.dim) if cfg.final_norm else nn.Identity()
        init_vit_weights(self)

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def forward(
        self, images: Float[Tensor, "B 3 H W"], mask: Tensor | None = None, mask_token: Tensor | None = None
    ) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """`mask` [B, h*w] (bool) replaces those patch embeddings by `mask_token` [1, 1, D] (iBOT's input)."""
        patches, h, w = self.patch_embed(images)
        b = patches.shape[0]
        if mask is not None:
            patches = torch.where(mask[..., None], mask_token.to(patches.dtype), patches)
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.registers.expand(b, -1, -1), patches], dim=1)
        pos = flat_grid(h, w, device=images.device).expand(b, -1, -1)
        rope = compute_rope(
            pos, rope_periods(self.cfg.dim // self.cfg.heads, self.cfg.rope_base, images.device)
        )
        for block in self.blocks:
            x = block(x, rope)
        x = self.norm(x)
        return x[:, 1 + self.cfg.registers :], x[:, 0], (h, w)


def interpolate_tokens(tokens: Float[Tensor, "B N D"], size: tuple[int, int], grid: int) -> Tensor:
    """Resample a [B, h*w, D] token grid to grid x grid (bilinear, align_corners=False)."""
    h, w = size
    if (h, w) == (grid, grid):
        return tokens
    x = rearrange(tokens, "b (h w) d -> b d h w", h=h, w=w)
    x = F.interpolate(x.float(), size=(grid, grid), mode="bilinear", align_corners=False, antialias=True)
    return rearrange(x, "b d h w -> b (h w) d").to(tokens.dtype)
