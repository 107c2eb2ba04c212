"""Feed-forward lifting of posed feature maps to 3D Gaussians, and their splatting to other views.

One Gaussian per context pixel: mean = camera centre + depth * (K^-1 [u, v, 1]) rotated to world
(depth is camera z, so the z = 1 direction, not the unit ray, is scaled); a flat disc facing the
camera whose in-plane std is `footprint` pixels at that depth (depth / f * footprint) and whose std
along the optical axis is `thickness` times that; opacity = `max_opacity` x a confidence (valid
depth, optionally lowered at depth discontinuities where one pixel straddles two surfaces). When the
geometry comes from a predictor, the Gaussians are the ones it was trained to render: its opacity and
its footprint. Teacher patch features reach the pixels by
joint bilateral upsampling guided by the RGB image (`upsample_features`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.gaussians.rasterize import rasterize_gaussians
from scene3d.rotations import rotmat_to_quat


@dataclass
class LiftConfig:
    footprint: float = 0.5  # in-plane std in pixels of the context view
    thickness: float = 0.2  # std along the optical axis relative to the in-plane std
    max_opacity: float = 0.99
    confidence: Literal["mask", "edges"] = "edges"  # "edges" lowers opacity at depth discontinuities
    edge_tau: float = 0.05  # relative inverse-depth second difference at which the confidence is 1/e
    eps2d: float = 0.3  # screen-space dilation of the rasterizer (3DGS default)
    # predicted geometry: the Gaussians as the depth predictor renders them in its training (its opacity,
    # no edge confidence, in-plane std `predicted_footprint`: MVSConfig.footprint); fainter ones are dropped
    predicted_footprint: float = 0.7
    min_opacity: float = 0.05


@dataclass
class LiftedGaussians:
    """N Gaussians with activated parameters and D-dimensional features."""

    means: Float[Tensor, "N 3"]
    quats: Float[Tensor, "N 4"]
    scales: Float[Tensor, "N 3"]
    opacities: Float[Tensor, " N"]
    features: Float[Tensor, "N D"]

    def __len__(self) -> int:
        return len(self.means)


def depth_confidence(depth: Float[Tensor, "V H W"], valid: Bool[Tensor, "V H W"], tau: float) -> Float[Tensor, "V H W"]:
    """exp(-r / tau) on valid pixels (0 elsewhere), r the larger of the x and y second differences of
    inverse depth relative to the pixel's inverse depth. Inverse depth is affine in the pixel
    coordinates on a plane, so r is 0 on planar surfaces at any obliqueness and large at depth
    discontinuities and silhouettes (where a pixel straddles two surfaces)."""
    inv = torch.where(valid, 1 / depth.clamp_min(1e-6), torch.zeros_like(depth))
    pad = F.pad(inv[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    lap_x = (pad[:, 1:-1, 2:] + pad[:, 1:-1, :-2] - 2 * inv).abs()
    lap_y = (pad[:, 2:, 1:-1] + pad[:, :-2, 1:-1] - 2 * inv).abs()
    rel = torch.maximum(lap_x, lap_y) / inv.clamp_min(1e-6)
    return torch.exp(-rel / tau) * valid


def lift_views(cameras: Cameras, depth: Float[Tensor, "V H W"], features: Float[Tensor, "V H W D"],
               valid: Bool[Tensor, "V H W"] | None = None, cfg: LiftConfig | None = None,
               opacity: Float[Tensor, "V H W"] | None = None) -> LiftedGaussians:
    """One Gaussian per valid pixel of every context view (pixels without depth are dropped). With a predicted
    `opacity`, the Gaussians are the predictor's: that opacity, `predicted_footprint`, no edge confidence;
    those under `min_opacity` are dropped."""
    cfg = cfg or LiftConfig()
    v, h, w = depth.shape
    valid = depth > 0 if valid is None else valid & (depth > 0)
    uv = rearrange(cameras.pixel_centers(), "h w c -> 1 (h w) c").expand(v, -1, -1)
    means = cameras.unproject(uv, rearrange(depth, "v h w -> v (h w)"))
    focal = torch.sqrt(cameras.K[:, 0, 0] * cameras.K[:, 1, 1])  # geometric mean of fx, fy
    footprint = cfg.footprint if opacity is None else cfg.predicted_footprint
    s = footprint * depth / focal[:, None, None]
    scales = torch.stack([s, s, s * cfg.thickness], -1)
    quats = rotmat_to_quat(cameras.c2w[:, :3, :3])[:, None, None, :].expand(v, h, w, 4)
    if opacity is not None:
        alpha = opacity * valid
        valid = valid & (opacity >= cfg.min_opacity)
    elif cfg.confidence == "edges":
        alpha = cfg.max_opacity * depth_confidence(depth, valid, cfg.edge_tau)
    else:
        alpha = cfg.max_opacity * valid.to(depth)
    keep = rearrange(valid, "v h w -> (v h w)")
    flat = {
        "means": rearrange(means, "v p c -> (v p) c"),
        "quats": rearrange(quats, "v h w c -> (v h w) c"),
        "scales": rearrange(scales, "v h w c -> (v h w) c"),
        "opacities": rearrange(alpha, "v h w -> (v h w)"),
        "features": rearrange(features, "v h w d -> (v h w) d"),
    }
    return LiftedGaussians(**{k: t[keep] for k, t in flat.items()})


def splat_features(gaussians: LiftedGaussians, cameras: Cameras, eps2d: float = 0.3,
                   backend: Literal["auto", "compiled", "torch", "dense"] = "auto"
                   ) -> tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W"]]:
    """Render the Gaussians' features into every camera; features are divided by the accumulated
    opacity (the alpha-normalised feature), which is returned alongside (0 = uncovered)."""
    out = rasterize_gaussians(gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities,
                              gaussians.features, cameras, backend=backend, eps2d=eps2d)
    feats = out.colors / out.alpha.clamp_min(1e-6)[..., None]
    return feats, out.alpha


# teacher patch features -> pixels -------------------------------------------------------------
def _bilinear_taps(n_out: int, n_in: int, device) -> tuple[Int[Tensor, " O"], Int[Tensor, " O"], Float[Tensor, " O"]]:
    """Source indices (i0, i1) and weight of i1 of align_corners=False bilinear resampling (edge-clamped)."""
    g = ((torch.arange(n_out, device=device) + 0.5) * n_in / n_out - 0.5).clamp(0, n_in - 1)
    i0 = g.floor().long()
    return i0, (i0 + 1).clamp(max=n_in - 1), g - i0


def joint_bilateral_upsample(feats: Float[Tensor, "B D h w"], guide: Float[Tensor, "B 3 H W"],
                             sigma_spatial: float = 1.0, sigma_range: float = 0.1,
                             radius: int = 2) -> Float[Tensor, "B D H W"]:
    """Joint bilateral upsampling (Kopf et al. 2007) of patch features to the guide's pixels: pixel p
    averages the patches q within `radius` patches of its own, weighted by a Gaussian of their distance
    (in patches, `sigma_spatial`) times a Gaussian of the RGB distance between p and q's mean colour
    (`sigma_range`, guide in [0, 1]). Features follow the image's edges; no label is used."""
    (b, _, h, w), (hh, ww) = feats.shape, guide.shape[-2:]
    patch_rgb = F.adaptive_avg_pool2d(guide, (h, w))  # [B, 3, h, w]
    gy = (torch.arange(hh, device=feats.device) + 0.5) * h / hh - 0.5  # continuous patch coordinates
    gx = (torch.arange(ww, device=feats.device) + 0.5) * w / ww - 0.5
    cy, cx = gy.round().long().clamp(0, h - 1), gx.round().long().clamp(0, w - 1)
    out = feats.new_zeros(b, feats.shape[1], hh, ww)
    total = feats.new_zeros(b, 1, hh, ww)
    for dy in range(-radius, radius + 1):
        yi = cy + dy
        ok_y = (yi >= 0) & (yi < h)
        yi = yi.clamp(0, h - 1)
        for dx in range(-radius, radius + 1):
            xi = cx + dx
            ok = (ok_y[:, None] & ((xi >= 0) & (xi < w))[None, :]).to(feats)
            xi = xi.clamp(0, w - 1)
            dist2 = (yi.to(feats) - gy)[:, None] ** 2 + (xi.to(feats) - gx)[None, :] ** 2
            spatial = torch.exp(-dist2 / (2 * sigma_spatial**2)) * ok  # [H, W]
            colour = patch_rgb[:, :, yi[:, None], xi[None, :]]  # [B, 3, H, W]
            rng = torch.exp(-(guide - colour).pow(2).sum(1, keepdim=True) / (2 * sigma_range**2))
            weight = spatial[None, None] * rng
            out = out + feats[:, :, yi[:, None], xi[None, :]] * weight
            total = total + weight
    return out / total.clamp_min(1e-12)


def label_guided_upsample(feats: Float[Tensor, "B D h w"], size: tuple[int, int], labels: Int[Tensor, "B H W"],
                          num_labels: int | None = None, eps: float = 1e-6) -> Float[Tensor, "B D H W"]:
    """Oracle upsampling along ground-truth segments: each of the four bilinear taps is further weighted
    by the fraction of its patch's pixels that carry the pixel's label, so features do not bleed across
    segment boundaries (plain bilinear where no tap shares the label)."""
    (b, _, h, w), (hh, ww) = feats.shape, size
    n_lab = int(labels.max()) + 1 if num_labels is None else num_labels
    onehot = rearrange(F.one_hot(labels.long(), n_lab).to(feats), "b hh ww c -> b c hh ww")
    frac = F.adaptive_avg_pool2d(onehot, (h, w))  # [B, C, h, w] label fractions per patch
    y0, y1, ty = _bilinear_taps(hh, h, feats.device)
    x0, x1, tx = _bilinear_taps(ww, w, feats.device)
    out = feats.new_zeros(b, feats.shape[1], hh, ww)
    total = feats.new_zeros(b, 1, hh, ww)
    plain = feats.new_zeros(b, feats.shape[1], hh, ww)
    for yi, wy in ((y0, 1 - ty), (y1, ty)):
        for xi, wx in ((x0, 1 - tx), (x1, tx)):
            tap = feats[:, :, yi[:, None], xi[None, :]]  # [B, D, H, W]
            share = torch.gather(frac[:, :, yi[:, None], xi[None, :]], 1, labels[:, None].long())  # [B,1,H,W]
            weight = (wy[:, None] * wx[None, :])[None, None]
            out = out + tap * weight * share
            total = total + weight * share
            plain = plain + tap * weight
    return torch.where(total > eps, out / total.clamp_min(eps), plain)


UpsampleMode = Literal["rgb", "bilinear", "oracle_labels"]


def upsample_features(feats: Float[Tensor, "B D h w"], size: tuple[int, int], mode: UpsampleMode = "bilinear",
                      images: Float[Tensor, "B 3 H W"] | None = None,
                      labels: Int[Tensor, "B H W"] | None = None) -> Float[Tensor, "B D H W"]:
    """Patch features to pixels: "bilinear" (align_corners=False), "rgb" (joint bilateral, guided by
    `images`; the default of lifting, no label) or "oracle_labels" (along ground-truth `labels`)."""
    if mode == "bilinear":
        return F.interpolate(feats, size=size, mode="bilinear", align_corners=False)
    if mode == "rgb":
        if images is None or tuple(images.shape[-2:]) != tuple(size):
            raise ValueError(f"upsample mode 'rgb' needs the guiding images at the output size {tuple(size)}")
        return joint_bilateral_upsample(feats, images)
    if mode == "oracle_labels":
        if labels is None:
            raise ValueError("upsample mode 'oracle_labels' needs label maps")
        return label_guided_upsample(feats, size, labels)
    raise ValueError(f"unknown upsample mode {mode!r}; choose rgb, bilinear or oracle_labels")


def fit_pca(x: Float[Tensor, "N D"], k: int) -> tuple[Float[Tensor, " D"], Float[Tensor, "D k"]]:
    """Mean and the top-k principal directions (columns, orthonormal) of the rows of x."""
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, vh[:k].T
