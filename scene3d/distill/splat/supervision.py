"""From a rendered feature map to a student target: per-segment blending and pooling to the
student's patch grid with a coverage mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor


def segment_blend(feats: Float[Tensor, "H W D"], segments: Int[Tensor, "H W"], valid: Bool[Tensor, "H W"],
                  weight: float) -> Float[Tensor, "H W D"]:
    """(1 - weight) * f + weight * (mean of f over the pixel's segment), the means taken over valid
    pixels; invalid pixels are left as they are."""
    if weight == 0:
        return feats
    seg = segments.reshape(-1).long()
    n = int(seg.max()) + 1
    flat, keep = rearrange(feats, "h w d -> (h w) d"), valid.reshape(-1).to(feats)
    sums = feats.new_zeros(n, feats.shape[-1]).index_add_(0, seg, flat * keep[:, None])
    counts = feats.new_zeros(n).index_add_(0, seg, keep)
    means = sums / counts.clamp_min(1)[:, None]
    blended = (1 - weight) * flat + weight * means[seg]
    return torch.where(valid.reshape(-1, 1), blended, flat).reshape(feats.shape)


def pool_to_grid(feats: Float[Tensor, "H W D"], valid: Bool[Tensor, "H W"], grid: tuple[int, int],
                 min_coverage: float) -> tuple[Float[Tensor, "D h w"], Bool[Tensor, "h w"]]:
    """Average of the valid pixels inside each patch of a (h, w) grid; a patch is kept when at least
    `min_coverage` of its pixels are valid."""
    v = valid.to(feats)[None, None]
    x = rearrange(feats, "hh ww d -> 1 d hh ww") * v
    num = F.adaptive_avg_pool2d(x, grid)[0]
    cover = F.adaptive_avg_pool2d(v, grid)[0, 0]
    return num / cover.clamp_min(1e-6), cover >= min_coverage
