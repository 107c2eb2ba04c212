"""FiT3D-style baseline: per-world feature Gaussians optimised to every view's teacher features.

Geometry is initialised from the dataset's depth (points unprojected from random valid pixels of
all views, isotropic scales from the 3 nearest neighbours, as 3DGS); features, opacities and scales
are then fitted by Adam to the teacher's pixel features of all views (MSE on valid pixels, at
`resolution_scale` of the image size: the teacher's features are patch-level, 8 px, anyway). The
fitted scene, rendered to a view, is that view's target (`SplatDistiller(target_source="fit3d")`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor
from tqdm import tqdm

from scene3d.data.dataset import MultiViewDataset
from scene3d.distill.splat.lift import LiftedGaussians
from scene3d.gaussians.rasterize import rasterize_gaussians
from scene3d.gaussians.scene import GaussianScene


@dataclass
class Fit3DConfig:
    n_points: int = 4000
    steps: int = 80
    views_per_step: int = 4
    lr_features: float = 0.05
    init_opacity: float = 0.5
    resolution_scale: float = 0.5  # fit at this fraction of the image size (features are patch-level anyway)
    seed: int = 0


def fit_feature_gaussians(ds: MultiViewDataset, pixel_feats: Float[Tensor, "N H W D"], cfg: Fit3DConfig | None = None,
                          progress: bool = False) -> tuple[LiftedGaussians, list[float]]:
    """Fit feature Gaussians to all views' pixel features; returns them (activated, detached) and the losses."""
    cfg = cfg or Fit3DConfig()
    g = torch.Generator().manual_seed(cfg.seed)
    n, h, w, d = pixel_feats.shape
    valid = (ds.depths > 0) if ds.masks is None else ds.masks & (ds.depths > 0)
    flat = torch.nonzero(valid.reshape(-1)).squeeze(1)
    pick = flat[torch.randperm(len(flat), generator=g)[: cfg.n_points]]
    view, pix = pick // (h * w), pick % (h * w)
    uv = torch.stack([pix % w, pix // w], -1).float() + 0.5
    points = ds.cameras[view].unproject(uv[:, None], ds.depths.reshape(n, -1)[view, pix][:, None])[:, 0]
    init = pixel_feats.reshape(n, -1, d)[view, pix]
    scene = GaussianScene.from_points(points, init, feature_dim=d, opacity=cfg.init_opacity)
    cameras = ds.cameras.scaled(cfg.resolution_scale)
    size = (cameras.height, cameras.width)
    feats = rearrange(F.interpolate(rearrange(pixel_feats, "n h w d -> n d h w"), size=size, mode="area"),
                      "n d h w -> n h w d")
    valid = F.interpolate(valid[:, None].float(), size=size, mode="area")[:, 0] > 0.99
    groups = scene.param_groups({"features": cfg.lr_features})
    opt = torch.optim.Adam([gr for gr in groups if gr["name"] != "means"], eps=1e-15)
    losses = []
    for _ in tqdm(range(cfg.steps), desc="fit3d feature Gaussians", disable=not progress):
        idx = torch.randperm(n, generator=g)[: cfg.views_per_step]
        out = rasterize_gaussians(scene.means, scene.quats, scene.scales, scene.opacities, scene.params["features"],
                                  cameras[idx])
        m = valid[idx].to(out.colors)[..., None]
        loss = ((out.colors - feats[idx]).pow(2) * m).sum() / (m.sum() * d).clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        lifted = LiftedGaussians(scene.means.detach(), scene.quats.detach(), scene.scales.detach(),
                                 scene.opacities.detach(), scene.params["features"].detach())
    return lifted, losses
