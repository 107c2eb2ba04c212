"""`GaussianScene`: the learnable parameters of a 3D Gaussian splatting scene.

Parameters live in an `nn.ParameterDict` so densification can swap tensors and optimizers can
be built per parameter (3DGS uses one learning rate per group):

    means [N,3]            world positions
    quats [N,4]            rotations, wxyz, normalised when used
    log_scales [N,3]       log of the standard deviations along the local axes
    opacity_logits [N]     sigmoid -> opacity
    sh0 [N,1,3], shN [N,K-1,3]   spherical-harmonics colour of degree 0..3 (colour mode), or
    features [N,D]         N-dimensional feature vectors (feature mode, e.g. for feature splatting)
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.gaussians.sh import eval_sh, num_sh_bases, rgb_to_sh

# Per-parameter learning rates of the 3DGS paper (means scaled by the scene extent).
PAPER_LRS = {"means": 1.6e-4, "quats": 1e-3, "log_scales": 5e-3, "opacity_logits": 5e-2,
             "sh0": 2.5e-3, "shN": 2.5e-3 / 20, "features": 2.5e-3}


def _inverse_sigmoid(x: Tensor) -> Tensor:
    return torch.log(x / (1 - x))


class GaussianScene(nn.Module):
    """N anisotropic 3D Gaussians with SH colour (`sh_degree` 0..3) or `feature_dim` features."""

    def __init__(self, means: Tensor, quats: Tensor, log_scales: Tensor, opacity_logits: Tensor,
                 sh0: Tensor | None = None, shN: Tensor | None = None, features: Tensor | None = None):
        super().__init__()
        if (features is None) == (sh0 is None):
            raise ValueError("give either SH colour (sh0 [, shN]) or features, not both")
        params = {"means": means, "quats": quats, "log_scales": log_scales, "opacity_logits": opacity_logits}
        if features is not None:
            params["features"] = features
        else:
            params["sh0"] = sh0
            params["shN"] = shN if shN is not None else sh0.new_zeros(len(sh0), 0, 3)
        n = len(means)
        for name, p in params.items():
            if len(p) != n:
                raise ValueError(f"GaussianScene.{name} has {len(p)} rows, means has {n}")
        self.params = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in params.items()})

    # construction ----------------------------------------------------------------------------
    @classmethod
    def from_points(cls, points: Float[Tensor, "N 3"], colors: Float[Tensor, "N C"] | None = None,
                    sh_degree: int = 3, feature_dim: int | None = None, scale: float | Tensor | None = None,
                    opacity: float = 0.1) -> GaussianScene:
        """Isotropic Gaussians at `points`; scale defaults to the mean distance to the 3 nearest points."""
        n = len(points)
        if scale is None:
            scale = _knn_scale(points)
        scale = torch.as_tensor(scale, dtype=points.dtype).expand(n).clone()
        quats = torch.zeros(n, 4, dtype=points.dtype)
        quats[:, 0] = 1.0
        log_scales = torch.log(scale)[:, None].repeat(1, 3)
        opacity_logits = torch.full((n,), float(_inverse_sigmoid(torch.tensor(opacity))), dtype=points.dtype)
        if feature_dim is not None:
            feats = colors if colors is not None else torch.zeros(n, feature_dim, dtype=points.dtype)
            return cls(points, quats, log_scales, opacity_logits, features=feats)
        rgb = colors if colors is not None else torch.full((n, 3), 0.5, dtype=points.dtype)
        sh0 = rgb_to_sh(rgb)[:, None, :]
        shN = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3, dtype=points.dtype)
        return cls(points, quats, log_scales, opacity_logits, sh0=sh0, shN=shN)

    @classmethod
    def random(cls, n: int, bounds: Float[Tensor, "2 3"], sh_degree: int = 3, feature_dim: int | None = None,
               generator: torch.Generator | None = None, opacity: float = 0.1) -> GaussianScene:
        """n Gaussians uniform in the box `bounds` ([min, max]) with random colours."""
        lo, hi = bounds[0].float(), bounds[1].float()
        pts = lo + (hi - lo) * torch.rand(n, 3, generator=generator)
        dim = 3 if feature_dim is None else feature_dim
        cols = torch.rand(n, dim, generator=generator)
        return cls.from_points(pts, cols, sh_degree=sh_degree, feature_dim=feature_dim, opacity=opacity)

    # views of the parameters -----------------------------------------------------------------
    def __len__(self) -> int:
        return self.params["means"].shape[0]

    @property
    def means(self) -> Tensor:
        return self.params["means"]

    @property
    def quats(self) -> Tensor:
        """Unit quaternions (wxyz)."""
        return nn.functional.normalize(self.params["quats"], dim=-1)

    @property
    def scales(self) -> Tensor:
        return torch.exp(self.params["log_scales"])

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.params["opacity_logits"])

    @property
    def is_feature_scene(self) -> bool:
        return "features" in self.params

    @property
    def sh_degree(self) -> int | None:
        if self.is_feature_scene:
            return None
        return math.isqrt(1 + self.params["shN"].shape[1]) - 1

    @property
    def sh_coeffs(self) -> Float[Tensor, "N K 3"]:
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    @property
    def channels(self) -> int:
        return self.params["features"].shape[1] if self.is_feature_scene else 3

    def colors(self, camera_centers: Float[Tensor, "C 3"], sh_degree: int | None = None) -> Float[Tensor, "C N D"]:
        """Per-camera colours (view-dependent SH, +0.5, clamped at 0) or the features, expanded to C."""
        n_cams = len(camera_centers)
        if self.is_feature_scene:
            return self.params["features"][None].expand(n_cams, -1, -1)
        degree = self.sh_degree if sh_degree is None else min(sh_degree, self.sh_degree)
        dirs = self.means[None] - camera_centers[:, None, :]
        coeffs = self.sh_coeffs[None].expand(n_cams, -1, -1, -1)
        return torch.clamp_min(eval_sh(degree, coeffs, dirs) + 0.5, 0.0)

    def param_groups(self, lrs: dict[str, float] | None = None, scene_extent: float = 1.0) -> list[dict]:
        """Optimizer groups, one per parameter, named; default rates are the paper's (means x extent)."""
        rates = {**PAPER_LRS, **(lrs or {})}
        groups = []
        for name, p in self.params.items():
            lr = rates[name] * (scene_extent if name == "means" else 1.0)
            groups.append({"params": [p], "lr": lr, "name": name})
        return groups

    def replace_params(self, new: dict[str, Tensor]) -> None:
        """Swap in new tensors (densification); keeps the dict's keys."""
        for k, v in new.items():
            self.params[k] = v if isinstance(v, nn.Parameter) else nn.Parameter(v)

    def detached(self) -> GaussianScene:
        p = {k: v.detach() for k, v in self.params.items()}
        return GaussianScene(**p)


def _knn_scale(points: Tensor, k: int = 3, chunk: int = 1024) -> Tensor:
    """Mean distance to the k nearest neighbours (the 3DGS initial scale), computed in chunks."""
    if len(points) <= 1:
        return torch.ones(len(points), dtype=points.dtype) * 0.01
    k = min(k, len(points) - 1)
    out = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i:i + chunk], points)
        out.append(d.topk(k + 1, largest=False).values[:, 1:].mean(-1))
    return torch.cat(out).clamp_min(1e-7)
