"""Brute-force dense reference: every pixel against every Gaussian, sorted by depth, autograd.

Same semantics as the tiled kernel (alpha = min(0.999, o exp(-power)), skip alpha < 1/255, stop
before the transmittance would reach 1e-4), written as plainly as possible: the test oracle and
the benchmark baseline. Memory is pixels x Gaussians per image, so keep it small or use
`pixel_chunk`.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from scene3d.gaussians.composite import ALPHA_MAX, T_MIN
from scene3d.gaussians.tiles import ALPHA_MIN


def composite_dense_image(means2d: Float[Tensor, "N 2"], conics: Float[Tensor, "N 3"], opacities: Float[Tensor, " N"],
                          feats: Float[Tensor, "N D"], depths: Float[Tensor, " N"], visible: Tensor,
                          pixels: Float[Tensor, "P 2"]) -> tuple[Tensor, Tensor]:
    """One image: (accumulated features [P,D], alpha [P]) at pixel coordinates `pixels`."""
    ids = torch.nonzero(visible).squeeze(1)
    ids = ids[torch.argsort(depths[ids].detach(), stable=True)]
    d = means2d[ids][None] - pixels[:, None]  # [P, N, 2]
    a, b, c = conics[ids].unbind(-1)
    power = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
    alpha = (opacities[ids] * torch.exp(-power)).clamp(max=ALPHA_MAX)
    ok = alpha >= ALPHA_MIN
    a_eff = torch.where(ok, alpha, torch.zeros_like(alpha))
    t_incl = torch.cumprod(1 - a_eff, dim=1)
    t_excl = torch.cat([torch.ones_like(t_incl[:, :1]), t_incl[:, :-1]], dim=1)
    contrib = ok & (t_incl > T_MIN)
    w = torch.where(contrib, a_eff * t_excl, torch.zeros_like(a_eff))
    return w @ feats[ids], w.sum(1)


def composite_dense(means2d: Float[Tensor, "C N 2"], conics: Float[Tensor, "C N 3"], opacities: Float[Tensor, "C N"],
                    feats: Float[Tensor, "C N D"], depths: Float[Tensor, "C N"], visible: Float[Tensor, "C N"],
                    width: int, height: int, pixel_chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Accumulated features [C,H,W,D] and alpha [C,H,W] (no background), brute force."""
    v, u = torch.meshgrid(torch.arange(height, dtype=means2d.dtype), torch.arange(width, dtype=means2d.dtype),
                          indexing="ij")
    pixels = torch.stack([u, v], -1).reshape(-1, 2) + 0.5
    step = pixel_chunk or len(pixels)
    accs, alphas = [], []
    for i in range(len(means2d)):
        parts = [composite_dense_image(means2d[i], conics[i], opacities[i], feats[i], depths[i], visible[i],
                                       pixels[s:s + step]) for s in range(0, len(pixels), step)]
        accs.append(torch.cat([p[0] for p in parts]).reshape(height, width, -1))
        alphas.append(torch.cat([p[1] for p in parts]).reshape(height, width))
    return torch.stack(accs), torch.stack(alphas)
