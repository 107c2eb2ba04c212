"""Canvas Attention (CanViT §4, Fig. 3A): asymmetric cross-attention between the glimpse (local)
stream and the canvas.

Both directions apply LayerNorm to the query side and to the key/value side and SR-RoPE to queries
and keys (prefix tokens unrotated), then PyTorch SDPA in canvas width with `heads` heads. Only the
local side has learned projections:

- read  (local queries the canvas): q = Linear(D -> D_can)(LN(local)); k = v = LN(canvas) with no
  projection; the output goes through Linear(D_can -> D) and is added to the local residual;
- write (the canvas queries local): q = LN(canvas) with no projection; k, v = Linear(D -> D_can)(LN(local));
  the output is added to the canvas directly (no output projection, no gate).

The canvas side never sees a projection, an MLP or self-attention.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from avfm.rope import RoPE, apply_rope


def to_heads(x: Float[Tensor, "B N D"], heads: int) -> Float[Tensor, "B H N d"]:
    return rearrange(x, "b n (h d) -> b h n d", h=heads)


def from_heads(x: Float[Tensor, "B H N d"]) -> Float[Tensor, "B N D"]:
    return rearrange(x, "b h n d -> b n (h d)")


def rope_attention(q: Tensor, k: Tensor, v: Tensor, q_rope: RoPE, k_rope: RoPE) -> Tensor:
    """SDPA over [B, H, N, d] heads after rotating queries and keys (prefix tokens unrotated)."""
    q, k = apply_rope(q, q_rope), apply_rope(k, k_rope)
    return F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))


class CanvasRead(nn.Module):
    """Local tokens read the canvas. Returns the residual [B, N_local, D] for the local stream."""

    def __init__(self, local_dim: int, canvas_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_norm = nn.LayerNorm(local_dim)
        self.kv_norm = nn.LayerNorm(canvas_dim)
        self.q_proj = nn.Linear(local_dim, canvas_dim)
        self.out_proj = nn.Linear(canvas_dim, local_dim)

    def forward(
        self,
        local: Float[Tensor, "B Nl D"],
        canvas: Float[Tensor, "B Nc Dc"],
        local_rope: RoPE,
        canvas_rope: RoPE,
    ) -> Float[Tensor, "B Nl D"]:
        q = to_heads(self.q_proj(self.q_norm(local)), self.heads)
        kv = to_heads(self.kv_norm(canvas), self.heads)
        return self.out_proj(from_heads(rope_attention(q, kv, kv, local_rope, canvas_rope)))


class CanvasWrite(nn.Module):
    """The canvas reads the local tokens. Returns the canvas update [B, N_canvas, D_can] (fp32)."""

    def __init__(self, local_dim: int, canvas_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_norm = nn.LayerNorm(canvas_dim)
        self.kv_norm = nn.LayerNorm(local_dim)
        self.k_proj = nn.Linear(local_dim, canvas_dim)
        self.v_proj = nn.Linear(local_dim, canvas_dim)

    def forward(
        self,
        canvas: Float[Tensor, "B Nc Dc"],
        local: Float[Tensor, "B Nl D"],
        canvas_rope: RoPE,
        local_rope: RoPE,
    ) -> Float[Tensor, "B Nc Dc"]:
        q = to_heads(self.q_norm(canvas), self.heads)
        kv = self.kv_norm(local)
        k, v = to_heads(self.k_proj(kv), self.heads), to_heads(self.v_proj(kv), self.heads)
        return from_heads(rope_attention(q, k, v, canvas_rope, local_rope)).float()
