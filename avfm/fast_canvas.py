"""The canvas side of Canvas Attention, made cheap at large canvases. `avfm.attention` is the reference:
`CanViT(..., fast_canvas=False)` runs it, and the tests hold this module to its outputs and gradients.

At canvas 128^2 (16k cells of 1024 channels, 67 MB per canvas-sized tensor) a canvit_b glimpse is
dominated by canvas-sized elementwise work, and on CPU most of that is page faults: every fresh 67 MB
tensor is mapped and zeroed by the kernel before the arithmetic touches it. What changes here:

- the canvas RoPE tables depend only on the grid: `canvas_rope` computes them once per (grid, registers,
  head width, base, device), laid out [N, 1, d/2] for the canvas's own [B, N, H, d] view (register rows
  cos 1, sin 0), so neither the tables nor a head-major copy of the canvas is made per step;
- RoPE through `avfm.rope.rotate` (four ops into one output, one autograd node);
- without autograd, every canvas-sized intermediate (layer norm, rotated keys / queries, the write's scores
  and update) goes into per-thread scratch buffers reused from call to call, the write's attention is two
  batched GEMMs (16k queries against ~70 keys) with an in-place softmax, and `write(..., in_place=True)`
  adds into a canvas the step already owns.
"""

from __future__ import annotations

import functools
import math
import threading

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from avfm.attention import CanvasRead, CanvasWrite, to_heads
from avfm.coords import flat_grid
from avfm.rope import RoPE, apply_rope, compute_rope, pad_rope, rope_periods, rotate, rotate_into

_scratch = threading.local()


def scratch(name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A buffer of `shape` (dtype and device of `like`, contents undefined) kept for this thread and reused
    by the next call with the same name; it grows to the largest shape asked for."""
    pool = _scratch.__dict__.setdefault("pool", {})
    key = (name, like.dtype, like.device, torch.is_inference_mode_enabled())
    n = math.prod(shape)
    if key not in pool or pool[key].numel() < n:
        pool.pop(key, None)
        pool[key] = torch.empty(n, dtype=like.dtype, device=like.device)
    return pool[key][:n].view(shape)


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)
@torch.no_grad()
def canvas_rope(grid: int, registers: int, head_dim: int, base: float, device: torch.device) -> RoPE:
    """sin / cos [R + G*G, 1, head_dim / 2] of the canvas tokens (registers unrotated), fp32, cached."""
    rope = compute_rope(flat_grid(grid, device=device)[None], rope_periods(head_dim, base, device))
    return RoPE(*(rearrange(t, "1 1 n a -> n 1 a") for t in pad_rope(rope, registers)))


def layer_norm_into(x: Float[Tensor, "B N D"], norm: nn.LayerNorm, out: Tensor) -> Tensor:
    """`norm(x)` written into `out` (no autograd)."""
    torch.sub(x, x.mean(-1, keepdim=True), out=out)
    var = torch.linalg.vector_norm(out, dim=-1, keepdim=True).square_().div_(x.shape[-1])
    out.mul_(var.add_(norm.eps).rsqrt_())
    return torch.addcmul(norm.bias, out, norm.weight, out=out)


def _heads(x: Tensor, heads: int) -> Tensor:
    return rearrange(x, "b n (h d) -> b n h d", h=heads)


def _softmax_(scores: Tensor) -> Tensor:
    """Softmax over the last dimension, in place."""
    return torch.ops.aten._softmax.out(scores, -1, False, out=scores)


def read(module: CanvasRead, local: Float[Tensor, "B Nl D"], canvas: Float[Tensor, "B Nc Dc"], local_rope: RoPE,
         canvas_rope: RoPE) -> Float[Tensor, "B Nl D"]:
    """`module(local, canvas, local_rope, ...)`, the canvas RoPE tables from `canvas_rope` (same result)."""
    q = apply_rope(to_heads(module.q_proj(module.q_norm(local)), module.heads), local_rope)
    if torch.is_grad_enabled():
        v = _heads(module.kv_norm(canvas), module.heads)
        k, v = (rearrange(t, "b n h d -> b h n d").to(q.dtype) for t in (rotate(v, canvas_rope), v))
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        v = _heads(layer_norm_into(canvas, module.kv_norm, scratch("norm", canvas.shape, canvas)), module.heads)
        k = rotate_into(v, canvas_rope, scratch("rotated", v.shape, v))
        b, n, h, d = v.shape
        scores = scratch("scores", (b, h, q.shape[2], n), v)
        torch.matmul(q.to(v.dtype) * d**-0.5, rearrange(k, "b n h d -> b h d n"), out=scores)
        out = torch.matmul(_softmax_(scores), rearrange(v, "b n h d -> b h n d")).to(q.dtype)
    return module.out_proj(rearrange(out, "b h n d -> b n (h d)"))


def write(module: CanvasWrite, canvas: Float[Tensor, "B Nc Dc"], local: Float[Tensor, "B Nl D"], canvas_rope: RoPE,
          local_rope: RoPE, in_place: bool = False) -> Float[Tensor, "B Nc Dc"]:
    """The canvas after the write, `canvas + module(canvas, local, ...)` (fp32). `in_place` (only without
    autograd): add the update into `canvas` itself."""
    kv = module.kv_norm(local)
    k = apply_rope(to_heads(module.k_proj(kv), module.heads), local_rope)
    v = to_heads(module.v_proj(kv), module.heads)
    if torch.is_grad_enabled():
        q = rearrange(rotate(_heads(module.q_norm(canvas), module.heads), canvas_rope), "b n h d -> b h n d")
        update = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
        return canvas + rearrange(update, "b h n d -> b n (h d)").float()
    q = _heads(layer_norm_into(canvas, module.q_norm, scratch("norm", canvas.shape, canvas)), module.heads)
    q = rearrange(rotate_into(q, canvas_rope, scratch("rotated", q.shape, q)), "b n h d -> b h n d")
    b, h, n, d = q.shape
    scores = scratch("scores", (b, h, n, k.shape[2]), q)
    torch.matmul(q, (k * d**-0.5).to(q.dtype).transpose(-1, -2), out=scores)
    update = scratch("update", q.shape, q)
    torch.matmul(_softmax_(scores), v.to(q.dtype), out=update)
    update = rearrange(update, "b h n d -> b n h d").float()
    cells = _heads(canvas, h)
    return rearrange(cells.add_(update) if in_place else cells + update, "b n h d -> b n (h d)")
