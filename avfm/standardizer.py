"""Per-position z-scoring of a teacher's targets (CanViT §5), fitted once on a sample of scenes and then
kept fixed in the model's buffers, one standardizer per canvas grid (the targets' grid).

Patches [B, G*G, D_t] get one mean and variance per cell and channel ([G*G, D_t]), the CLS [B, D_t] one per
channel ([1, D_t]);
x -> (x - mean) / sqrt(var + eps) with the population variance and eps 1e-6, as the reference
implementation (`canvit_pytorch.standardizers`), whose fitted statistics load unchanged.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


class TargetStandardizer(nn.Module):
    """Statistics of the teacher's patches on a grid x grid canvas and of its CLS (buffers)."""

    def __init__(self, grid: int, dim: int, eps: float = 1e-6):
        super().__init__()
        self.grid, self.eps = grid, eps
        self.register_buffer("patch_mean", torch.zeros(grid * grid, dim))
        self.register_buffer("patch_var", torch.ones(grid * grid, dim))
        self.register_buffer("cls_mean", torch.zeros(1, dim))
        self.register_buffer("cls_var", torch.ones(1, dim))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, patches: Float[Tensor, "N G2 Dt"], cls: Float[Tensor, "N Dt"]) -> None:
        if patches.shape[1:] != self.patch_mean.shape or cls.shape[1:] != self.cls_mean.shape[1:]:
            raise ValueError(f"targets {tuple(patches.shape[1:])} and CLS {tuple(cls.shape[1:])} do not match the "
                             f"standardizer's {tuple(self.patch_mean.shape)} (canvas_grid^2, teacher_dim)")
        cls = cls[:, None]
        for (var, mean), data in (((self.patch_var, self.patch_mean), patches), ((self.cls_var, self.cls_mean), cls)):
            v, m = torch.var_mean(data.float(), 0, correction=0)
            var.copy_(v)
            mean.copy_(m)
        self.fitted.fill_(True)

    @property
    def patch_scale(self) -> Float[Tensor, "G2 Dt"]:
        return (self.patch_var + self.eps).sqrt()

    @property
    def cls_scale(self) -> Float[Tensor, "1 Dt"]:
        return (self.cls_var + self.eps).sqrt()

    def standardize(self, patches: Float[Tensor, "B G2 Dt"], cls: Float[Tensor, "B Dt"]) -> tuple[Tensor, Tensor]:
        return (patches - self.patch_mean) / self.patch_scale, (cls - self.cls_mean) / self.cls_scale

    def destandardize(self, patches: Float[Tensor, "B G2 Dt"], cls: Float[Tensor, "B Dt"]) -> tuple[Tensor, Tensor]:
        return patches * self.patch_scale + self.patch_mean, cls * self.cls_scale + self.cls_mean
