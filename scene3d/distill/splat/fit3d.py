"""FiT3D baseline (Yue et al. 2024): per-world feature Gaussians fitted to every view, with 3DGS's
adaptive density control and a learned feature decoder.

Each world's Gaussians carry an RGB colour and a low-dimensional feature (`feature_dim`); rendered
features pass through a linear decoder (shared by the world's views) to the teacher's width. Colour
(L1, the 3DGS photometric term) and decoded features (MSE against the teacher's pixel features) are
fitted jointly over every pixel by Adam; means, scales, rotations and opacities move, and Gaussians
are cloned, split and pruned by the 3DGS criterion (`scene3d.gaussians.strategy`). Initial points are
unprojected from the geometry the splat targets use (the depth predictor's depth, drawn in proportion
to its opacity; the dataset's depth and masks in the oracle row), as FiT3D starts from a
reconstruction's points. The fitted scene, rendered to a view and decoded, is
that view's target (`SplatDistiller(target_source="fit3d")`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.config import Range
from scene3d.data.dataset import MultiViewDataset
from scene3d.distill.splat.lift import LiftedGaussians
from scene3d.gaussians.rasterize import rasterize_gaussians
from scene3d.gaussians.scene import GaussianScene
from scene3d.gaussians.strategy import DensifyStrategy, DensityController
from scene3d.gaussians.train import make_optimizer, scene_extent
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import FitResult, RunConfig, fit


def fit3d_densify() -> DensifyStrategy:
    """3DGS's density control compressed to a 300-step fit: refine every 50 steps from 50 to 250."""
    return DensifyStrategy(refine_start=50, refine_stop=250, refine_every=50, reset_every=1_000_000,
                           max_gaussians=30_000)


@dataclass
class Fit3DConfig:
    n_points: Annotated[int, Range(1)] = 4000  # initial Gaussians, unprojected from the views' depth
    steps: Annotated[int, Range(1)] = 300
    views_per_step: Annotated[int, Range(1)] = 4
    feature_dim: Annotated[int, Range(1)] = 32  # per Gaussian; the decoder maps it to the teacher's width
    lr_features: Annotated[float, Range(0, above=True)] = 0.02
    lr_decoder: Annotated[float, Range(0, above=True)] = 1e-2
    rgb_weight: Annotated[float, Range(0)] = 1.0
    init_opacity: Annotated[float, Range(0, 1, above=True)] = 0.5
    densify: DensifyStrategy = field(default_factory=fit3d_densify)
    seed: int = 0


class FeatureGaussianFit:
    """One world's feature Gaussians and decoder fitted to its images [N, H, W, 3] and pixel features
    [N, H, W, D], as a `scene3d.train.Trainable`: per step `views_per_step` views drawn with its own
    generator; L1 colour + MSE of the decoded features over every pixel. Initial points are drawn from
    the pixels in proportion to `weight` (an opacity or a mask) and unprojected at `depth`."""

    name = "fit3d feature Gaussians"

    def __init__(self, ds: MultiViewDataset, pixel_feats: Float[Tensor, "N H W D"], depth: Float[Tensor, "N H W"],
                 weight: Float[Tensor, "N H W"], cfg: Fit3DConfig):
        self.cfg, self.cameras, self.images, self.feats = cfg, ds.cameras, ds.images, pixel_feats
        self.generator = g = torch.Generator().manual_seed(cfg.seed)
        n, h, w, d = pixel_feats.shape
        weight = (weight * (depth > 0)).reshape(-1).double()
        n_pick = min(cfg.n_points, int((weight > 0).sum()))
        if n_pick == 0:
            raise ValueError("FiT3D: no pixel with depth and a nonzero weight to place Gaussians at")
        pick = torch.multinomial(weight, n_pick, replacement=False, generator=g)
        view, pix = pick // (h * w), pick % (h * w)
        uv = torch.stack([pix % w, pix // w], -1).float() + 0.5
        points = ds.cameras[view].unproject(uv[:, None], depth.reshape(n, -1)[view, pix][:, None])[:, 0]
        colours = ds.images.reshape(n, -1, 3)[view, pix]
        init = torch.cat([colours, 0.01 * torch.randn(len(pick), cfg.feature_dim, generator=g)], 1)
        self.scene = GaussianScene.from_points(points, init, feature_dim=3 + cfg.feature_dim,
                                               opacity=cfg.init_opacity)
        away = (1 - weight.reshape(n, h, w, 1)).float()  # the background colour: the image away from the Gaussians
        self.background = (ds.images * away).sum((0, 1, 2)) / away.sum().clamp_min(1e-6)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.decoder = nn.Linear(cfg.feature_dim, d)
        extent = scene_extent(ds.cameras)
        self.opt = make_optimizer(self.scene, extent)
        for group in self.opt.param_groups:
            if group["name"] == "features":
                group["lr"] = cfg.lr_features
        self.decoder_opt = torch.optim.Adam(self.decoder.parameters(), lr=cfg.lr_decoder)
        self.density = DensityController(cfg.densify, self.scene, self.opt, extent)
        self.losses: list[float] = []
        self._out = None

    def render(self, idx: Tensor):
        s = self.scene
        bg = torch.cat([self.background, self.background.new_zeros(self.cfg.feature_dim)])
        return rasterize_gaussians(s.means, s.quats, s.scales, s.opacities, s.params["features"], self.cameras[idx],
                                   background=bg)

    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        idx = torch.randperm(len(self.images), generator=self.generator)[: self.cfg.views_per_step]
        out = self.render(idx)
        self.density.before_backward(out)
        rgb, low = out.colors[..., :3], out.colors[..., 3:]
        feature = (self.decoder(low) - self.feats[idx]).pow(2).mean()
        colour = (rgb - self.images[idx]).abs().mean()
        loss = feature + self.cfg.rgb_weight * colour
        self.opt.zero_grad(set_to_none=True)
        self.decoder_opt.zero_grad(set_to_none=True)
        self.losses.append(loss.item())
        self._out = out
        return loss, {"loss": self.losses[-1], "feature": feature.item(), "rgb": colour.item()}

    def guarded_parameters(self) -> Iterator[tuple[str, Tensor]]:
        yield from self.scene.named_parameters()
        yield from self.decoder.named_parameters()

    def apply(self, step: int) -> dict[str, float]:
        self.opt.step()
        self.decoder_opt.step()
        info = self.density.after_backward(step, self._out)
        self._out = None
        return {f"density/{k}": float(v) for k, v in info.items()}

    def validate(self) -> dict[str, float]:
        return {}

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        return {"loss_last": self.losses[-1], "gaussians": len(self.scene)} if self.losses else {}

    def checkpoint_config(self) -> dict[str, Any]:
        return {"fit3d": config_to_dict(self.cfg)}

    def state_dict(self) -> dict[str, Any]:
        return {"scene": {k: v.detach().clone() for k, v in self.scene.params.items()},
                "decoder": self.decoder.state_dict(), "optimizer": self.opt.state_dict(),
                "decoder_optimizer": self.decoder_opt.state_dict(), "density": self.density.state_dict(),
                "losses": torch.tensor(self.losses, dtype=torch.float64),
                "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scene.replace_params(state["scene"])
        self.opt = make_optimizer(self.scene, self.density.extent)
        self.opt.load_state_dict(state["optimizer"])
        self.density = DensityController(self.cfg.densify, self.scene, self.opt, self.density.extent)
        self.density.load_state_dict(state["density"])
        self.decoder.load_state_dict(state["decoder"])
        self.decoder_opt.load_state_dict(state["decoder_optimizer"])
        self.losses = state["losses"].tolist()
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])

    @torch.no_grad()
    def lifted(self) -> LiftedGaussians:
        """The fitted Gaussians (activated, detached) with their low-dimensional features."""
        s = self.scene
        return LiftedGaussians(s.means.detach(), s.quats.detach(), s.scales.detach(), s.opacities.detach(),
                               s.params["features"][:, 3:].detach())


def fit_feature_gaussians(ds: MultiViewDataset, pixel_feats: Float[Tensor, "N H W D"], depth: Float[Tensor, "N H W"],
                          weight: Float[Tensor, "N H W"], cfg: Fit3DConfig | None = None, progress: bool = False
                          ) -> tuple[LiftedGaussians, nn.Module, list[float]]:
    """Fit one world's feature Gaussians and decoder in memory (`scene3d.train.fit`, no run folder: a fit is
    deterministic and short, a resumed run refits it); returns the Gaussians (low-dimensional features),
    the decoder (frozen) and the loss of every step."""
    cfg = cfg or Fit3DConfig()
    fitter = FeatureGaussianFit(ds, pixel_feats, depth, weight, cfg)
    fit(fitter, None, RunConfig(eval_every=0, progress=progress), cfg.steps)
    return fitter.lifted(), fitter.decoder.eval().requires_grad_(False), fitter.losses
