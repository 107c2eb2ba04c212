"""Analytic forward FLOPs (one multiply-add = 2 FLOPs, as torch.utils.flop_counter): matmuls,
the patch-embedding convolution and attention (QK^T and AV); norms and activations are not counted.
"""

from __future__ import annotations

from avfm.model import CanViTConfig


def linear(n: int, d_in: int, d_out: int) -> int:
    return 2 * n * d_in * d_out


def attention(n_q: int, n_k: int, dim: int) -> int:
    """QK^T plus AV over all heads: 2 * n_q * n_k * dim each."""
    return 4 * n_q * n_k * dim


def vit_block(n: int, dim: int, mlp_ratio: float) -> int:
    hidden = int(dim * mlp_ratio)
    return linear(n, dim, 3 * dim) + attention(n, n, dim) + linear(n, dim, dim) + 2 * linear(n, dim, hidden)


def canvit_flops(cfg: CanViTConfig, canvas_grid: int | None = None, heads: bool = False) -> dict[str, int]:
    """FLOPs of one `CanViT.step` by part, and their `total`."""
    g = cfg.canvas_grid if canvas_grid is None else canvas_grid
    n_patch = cfg.glimpse_grid**2
    n = cfg.n_prefix + n_patch
    n_can = cfg.canvas_registers + g * g
    d, dc = cfg.dim, cfg.canvas_dim
    parts = {
        "patch_embed": linear(n_patch, 3 * cfg.patch_size**2, d),
        "vpe": linear(1, 3, d // 2) if cfg.vpe else 0,
        "blocks": cfg.depth * vit_block(n, d, cfg.mlp_ratio),
        "reads": len(cfg.read_after) * (2 * linear(n, d, dc) + attention(n, n_can, dc)),
        "writes": len(cfg.write_after) * (2 * linear(n, d, dc) + attention(n_can, n, dc)),
    }
    if heads:
        parts["heads"] = linear(g * g, dc, cfg.teacher_dim) + linear(1, d, cfg.teacher_dim)
    parts["total"] = sum(parts.values())
    return parts


def vit_flops(
    dim: int, depth: int, mlp_ratio: float, patch_size: int, image_px: int, n_prefix: int = 1
) -> int:
    """A passive ViT on an image_px x image_px image (output grid image_px / patch_size)."""
    n_patch = (image_px // patch_size) ** 2
    n = n_prefix + n_patch
    return linear(n_patch, 3 * patch_size**2, dim) + depth * vit_block(n, dim, mlp_ratio)
