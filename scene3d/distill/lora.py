"""LoRA adapters (Hu et al. 2021) for any module's linear layers: y = W x + b + (alpha / r) B A x with
W, b frozen, A ~ Kaiming-uniform, B = 0 (so a freshly adapted module computes exactly what it did)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale


def add_lora(module: nn.Module, rank: int, alpha: float | None = None) -> nn.Module:
    """Replace every nn.Linear inside `module` by a LoRALinear (in place) and freeze everything else;
    only the adapters' A and B stay trainable. Returns the module."""
    module.requires_grad_(False)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, LoRALinear(child, rank, float(rank if alpha is None else alpha)))
        else:
            add_lora(child, rank, alpha)
    return module
