"""Pictures for splat-and-distill runs: feature maps as PCA colours, target panels, loss curves."""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from scene3d.distill.splat.lift import upsample_features
from scene3d.viz import image_grid, pca_rgb, save_png


@torch.no_grad()
def save_feature_panel(path: str | Path, images: Float[Tensor, "V H W 3"],
                       encoders: dict[str, torch.nn.Module]) -> Path:
    """Rows: the images, then each encoder's features (bilinearly upsampled) in shared PCA colours."""
    size = images.shape[1:3]
    maps = {name: rearrange(upsample_features(enc(rearrange(images, "v h w c -> v c h w")), size),
                            "v d h w -> v h w d") for name, enc in encoders.items()}
    shared = pca_rgb(torch.cat(list(maps.values())))
    rows, v = [list(images)], len(images)
    for k in range(len(maps)):
        rows.append(shared[k * v:(k + 1) * v])
    return save_png(path, image_grid(rows))


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
