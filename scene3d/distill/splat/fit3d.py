"""FiT3D-style baseline: per-world feature Gaussians optimised to every view's teacher features.

Geometry is initialised from the dataset's depth (points unprojected from random valid pixels of
all views, isotropic scales from the 3 nearest neighbours, as 3DGS); features, opacities and scales
are then fitted by Adam to the teacher's pixel features of all views (MSE on valid pixels, at
`resolution_scale` of the image size: the teacher's features are patch-level, 8 px, anyway). The
fitted scene, rendered to a view, is that view's target (`SplatDistiller(target_source="fit3d")`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from scene3d.config import Range
from scene3d.data.dataset import MultiViewDataset
from scene3d.distill.splat.lift import LiftedGaussians
from scene3d.gaussians.rasterize import rasterize_gaussians
from scene3d.gaussians.scene import GaussianScene
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import FitResult, RunConfig, fit


@dataclass
class Fit3DConfig:
    n_points: Annotated[int, Range(1)] = 4000
    steps: Annotated[int, Range(1)] = 80
    views_per_step: Annotated[int, Range(1)] = 4
    lr_features: Annotated[float, Range(0, above=True)] = 0.05
    init_opacity: Annotated[float, Range(0, 1, above=True)] = 0.5
    # fit at this fraction of the image size (features are patch-level anyway)
    resolution_scale: Annotated[float, Range(0, 1, above=True)] = 0.5
    seed: int = 0


class FeatureGaussianFit:
    """One world's feature Gaussians fitted to its views' pixel features [N, H, W, D], as a
    `scene3d.train.Trainable`: per step `views_per_step` views drawn with its own generator, masked MSE,
    Adam on features, opacities and scales (the means stay where the depth put them)."""

    name = "fit3d feature Gaussians"

    def __init__(self, ds: MultiViewDataset, pixel_feats: Float[Tensor, "N H W D"], cfg: Fit3DConfig):
        self.cfg = cfg
        self.generator = g = torch.Generator().manual_seed(cfg.seed)
        n, h, w, d = pixel_feats.shape
        valid = (ds.depths > 0) if ds.masks is None else ds.masks & (ds.depths > 0)
        flat = torch.nonzero(valid.reshape(-1)).squeeze(1)
        pick = flat[torch.randperm(len(flat), generator=g)[: cfg.n_points]]
        view, pix = pick // (h * w), pick % (h * w)
        uv = torch.stack([pix % w, pix // w], -1).float() + 0.5
        points = ds.cameras[view].unproject(uv[:, None], ds.depths.reshape(n, -1)[view, pix][:, None])[:, 0]
        init = pixel_feats.reshape(n, -1, d)[view, pix]
        self.scene = GaussianScene.from_points(points, init, feature_dim=d, opacity=cfg.init_opacity)
        self.cameras = ds.cameras.scaled(cfg.resolution_scale)
        size = (self.cameras.height, self.cameras.width)
        self.feats = rearrange(F.interpolate(rearrange(pixel_feats, "n h w d -> n d h w"), size=size, mode="area"),
                               "n d h w -> n h w d")
        self.valid = F.interpolate(valid[:, None].float(), size=size, mode="area")[:, 0] > 0.99
        groups = self.scene.param_groups({"features": cfg.lr_features})
        self.opt = torch.optim.Adam([gr for gr in groups if gr["name"] != "means"], eps=1e-15)
        self.losses: list[float] = []

    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        scene, n, d = self.scene, len(self.feats), self.feats.shape[-1]
        idx = torch.randperm(n, generator=self.generator)[: self.cfg.views_per_step]
        out = rasterize_gaussians(scene.means, scene.quats, scene.scales, scene.opacities, scene.params["features"],
                                  self.cameras[idx])
        m = self.valid[idx].to(out.colors)[..., None]
        loss = ((out.colors - self.feats[idx]).pow(2) * m).sum() / (m.sum() * d).clamp_min(1)
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(loss.item())
        return loss, {"loss": self.losses[-1]}

    def guarded_parameters(self) -> Iterator[tuple[str, Tensor]]:
        return self.scene.named_parameters()

    def apply(self, step: int) -> dict[str, float]:
        self.opt.step()
        return {}

    def validate(self) -> dict[str, float]:
        return {}

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        return {"loss_last": self.losses[-1]} if self.losses else {}

    def checkpoint_config(self) -> dict[str, Any]:
        return {"fit3d": config_to_dict(self.cfg)}

    def state_dict(self) -> dict[str, Any]:
        return {"scene": self.scene.state_dict(), "optimizer": self.opt.state_dict(),
                "losses": torch.tensor(self.losses, dtype=torch.float64),
                "rng": {"generator": self.generator.get_state()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scene.load_state_dict(state["scene"])
        self.opt.load_state_dict(state["optimizer"])
        self.losses = state["losses"].tolist()
        self.generator.set_state(state["rng"]["generator"])

    @torch.no_grad()
    def lifted(self) -> LiftedGaussians:
        """The fitted Gaussians, activated and detached."""
        s = self.scene
        return LiftedGaussians(s.means.detach(), s.quats.detach(), s.scales.detach(), s.opacities.detach(),
                               s.params["features"].detach())


def fit_feature_gaussians(ds: MultiViewDataset, pixel_feats: Float[Tensor, "N H W D"], cfg: Fit3DConfig | None = None,
                          progress: bool = False) -> tuple[LiftedGaussians, list[float]]:
    """Fit feature Gaussians to all views' pixel features in memory (`scene3d.train.fit`, no run folder:
    a fit is deterministic and short, a resumed run refits it); returns them and the loss of every step."""
    cfg = cfg or Fit3DConfig()
    fitter = FeatureGaussianFit(ds, pixel_feats, cfg)
    fit(fitter, None, RunConfig(eval_every=0, progress=progress), cfg.steps)
    return fitter.lifted(), fitter.losses
