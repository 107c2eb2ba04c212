"""Evaluation of distilled objects: recognition by an independent classifier, colour saturation
against the training renders (over-saturation is SDS's known failure). Shape checks: `geometry`."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


def foreground(images: Float[Tensor, "B 3 H W"], background: tuple[float, float, float] = (1.0, 1.0, 1.0),
               tol: float = 0.02) -> Tensor:
    """[B,H,W] bool: pixels that differ from the plain background by more than `tol` in some channel."""
    bg = torch.tensor(background, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return ((images - bg).abs() > tol).any(1)


def saturation(images: Float[Tensor, "B 3 H W"], mask: Tensor | None = None) -> float:
    """Mean HSV saturation (max - min) / max over foreground pixels (all pixels if none)."""
    hi, lo = images.amax(1), images.amin(1)
    sat = (hi - lo) / hi.clamp_min(1e-6)
    mask = foreground(images) if mask is None else mask
    return float(sat[mask].mean()) if mask.any() else float(sat.mean())


@torch.no_grad()
def recognition(classifier: nn.Module, images: Float[Tensor, "V 3 H W"], label: int) -> float:
    """Fraction of views the classifier labels as `label`."""
    return float((classifier(images).argmax(-1) == label).float().mean())
