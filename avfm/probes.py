"""Frozen linear probes: segmentation (LN -> BN -> 1x1 conv on a token grid, logits upsampled to the
label size; mIoU) and classification (LN -> Linear on a CLS; top-1). Paper App. D.3-D.4.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn


class SegProbe(nn.Module):
    """[B, g*g, D] tokens -> [B, C, H, W] logits; `layer_norm=False` for already-normalised features."""

    def __init__(self, dim: int, num_classes: int, layer_norm: bool = True, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.bn = nn.BatchNorm2d(dim)
        self.conv = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, tokens: Float[Tensor, "B N D"], size: tuple[int, int]) -> Float[Tensor, "B C H W"]:
        g = math.isqrt(tokens.shape[1])
        x = rearrange(self.norm(tokens.float()), "b (h w) d -> b d h w", h=g, w=g)
        logits = self.conv(self.bn(self.drop(x)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class ClsProbe(nn.Module):
    def __init__(self, dim: int, num_classes: int, layer_norm: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, cls: Float[Tensor, "B D"]) -> Float[Tensor, "B C"]:
        return self.fc(self.norm(cls.float()))


def fit_probe(
    probe: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 1e-3,
    seed: int = 0,
    **forward_kwargs,
) -> nn.Module:
    """AdamW, linear warm-up then cosine decay, on (inputs, targets); returns the probe in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    probe.train()
    for _ in range(steps):
        idx = torch.randint(len(inputs), (min(batch_size, len(inputs)),), generator=g)
        loss = F.cross_entropy(probe(inputs[idx], **forward_kwargs), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return probe.eval().requires_grad_(False)


def fit_seg_probe(
    tokens: Tensor, labels: Tensor, num_classes: int, layer_norm: bool = True, **kwargs
) -> SegProbe:
    """Train a `SegProbe` on tokens [N, g*g, D] against labels [N, H, W]."""
    probe = SegProbe(tokens.shape[-1], num_classes, layer_norm)
    return fit_probe(probe, tokens, labels, size=tuple(labels.shape[-2:]), **kwargs)


def fit_cls_probe(
    cls: Tensor, targets: Tensor, num_classes: int, layer_norm: bool = True, **kwargs
) -> ClsProbe:
    return fit_probe(ClsProbe(cls.shape[-1], num_classes, layer_norm), cls, targets, **kwargs)


def top1(logits: Tensor, target: Tensor) -> float:
    return float((logits.argmax(-1) == target).float().mean())


def entropy_map(probe: SegProbe, tokens: Tensor) -> Float[Tensor, "B g g"]:
    """Per-position class entropy of the probe on a token grid (the EG-C2F uncertainty)."""
    g = math.isqrt(tokens.shape[1])
    logp = probe(tokens, size=(g, g)).log_softmax(1)
    return -(logp.exp() * logp).sum(1)
