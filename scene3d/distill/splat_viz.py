"""Pictures for splat-and-distill runs: feature maps as PCA colours, target panels, loss curves."""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from scene3d.distill.splat_lift import fit_pca


def pca_rgb(maps: list[Float[Tensor, "H W D"]]) -> list[Float[Tensor, "H W 3"]]:
    """Feature maps coloured by their shared first three principal components (min-max to [0, 1])."""
    flat = torch.cat([rearrange(m, "h w d -> (h w) d") for m in maps])
    mean, basis = fit_pca(flat, 3)
    proj = (flat - mean) @ basis
    lo, hi = proj.amin(0), proj.amax(0)
    proj = (proj - lo) / (hi - lo).clamp_min(1e-6)
    out, start = [], 0
    for m in maps:
        n = m.shape[0] * m.shape[1]
        out.append(proj[start:start + n].reshape(m.shape[0], m.shape[1], 3))
        start += n
    return out


def plot_losses(path: str | Path, curves: dict[str, list[float]]) -> Path:
    """One line per named loss curve, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("distillation loss")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
