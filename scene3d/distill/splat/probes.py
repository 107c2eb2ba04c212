"""Probe3D-style 3D-awareness probes of frozen dense features on held-out multi-view worlds.

Features [N, D, h, w] are upsampled bilinearly to pixels and standardised with the probe-training
statistics. Linear probes, fitted on the views of probe-training worlds and scored on the views of
other held-out worlds:
- depth: ridge regression to log camera-z depth; RMSE (world units) and delta < 1.25,
- surface normals: ridge regression to camera-frame normals, normalised; mean angular error and
  the fraction under 11.25 / 22.5 / 30 degrees,
- semantic segmentation: softmax regression (full-batch Adam); mIoU over classes present.
And without training: multi-view correspondence: for pixels of view i that are visible in view j
(ground-truth depth and poses), the nearest neighbour in feature space (cosine) among view j's
foreground pixels; recall at pixel thresholds, binned by the angle between the optical axes.
(Probe3D uses DPT-style heads on 512 px images; ours are linear probes on 64 px worlds.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from scene3d.config import Range
from scene3d.data.dataset import MultiViewDataset
from scene3d.distill.splat.data import view_angles
from scene3d.metrics import depth_metrics, miou, normal_metrics


@dataclass
class ProbeConfig:
    ridge: float = 1e-2  # L2 penalty (in units of the number of pixels) of the depth / normal probes
    max_pixels: Annotated[int, Range(1)] = 60000  # pixels sampled from the probe-training views
    seg_steps: Annotated[int, Range(1)] = 300
    seg_lr: float = 0.05
    thresholds_px: tuple[float, ...] = (5.0, 10.0, 20.0)
    reference_size: int = 128  # thresholds are pixels of a reference_size image, scaled to the eval size
    angle_bins: tuple[float, ...] = (0.0, 30.0, 60.0, 90.0, 180.0)
    query_stride: Annotated[int, Range(1)] = 2  # query every stride-th pixel of view i
    pairs_per_world: Annotated[int, Range(1)] = 28
    num_classes: int = 6
    seed: int = 0


@torch.no_grad()
def extract_features(encoder: nn.Module, datasets: list[MultiViewDataset], batch: int = 16) -> list[Tensor]:
    """Per dataset, pixel features [N, H, W, D] of every view (the encoder's [B, D, h, w] upsampled)."""
    encoder.eval()
    out = []
    for ds in datasets:
        images = rearrange(ds.images, "n h w c -> n c h w")
        feats = torch.cat([encoder(images[i:i + batch]) for i in range(0, len(images), batch)])
        up = F.interpolate(feats.float(), size=(ds.height, ds.width), mode="bilinear", align_corners=False)
        out.append(rearrange(up, "n d h w -> n h w d"))
    return out


def camera_normals(ds: MultiViewDataset) -> Float[Tensor, "N H W 3"]:
    """The dataset's world normals in each view's camera frame (OpenCV axes)."""
    rot = ds.cameras.c2w[:, :3, :3]
    return torch.einsum("nji,nhwj->nhwi", rot, ds.normals)


class Standardizer:
    def __init__(self, x: Float[Tensor, "P D"]):
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def ridge_fit(x: Float[Tensor, "P D"], y: Float[Tensor, "P K"], lam: float) -> Float[Tensor, "D1 K"]:
    """Closed-form ridge regression with an unpenalised bias (last row of the weights)."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1).double()
    reg = torch.eye(xb.shape[1], dtype=torch.float64) * lam * len(x)
    reg[-1, -1] = 0
    return torch.linalg.solve(xb.T @ xb + reg, xb.T @ y.double()).float()


def ridge_predict(x: Tensor, weights: Tensor) -> Tensor:
    return x @ weights[:-1] + weights[-1]


def _sample(mask: Bool[Tensor, "..."], n: int, g: torch.Generator) -> Int[Tensor, " P"]:
    idx = torch.nonzero(mask.reshape(-1)).squeeze(1)
    return idx[torch.randperm(len(idx), generator=g)[:n]]


def dense_probes(train_feats: list[Tensor], train_sets: list[MultiViewDataset], test_feats: list[Tensor],
                 test_sets: list[MultiViewDataset], cfg: ProbeConfig) -> dict[str, float]:
    """Depth, normal and segmentation probes: fit on the training views, score on the test views."""
    g = torch.Generator().manual_seed(cfg.seed)
    ftr, fte = torch.cat(train_feats), torch.cat(test_feats)
    d = ftr.shape[-1]
    depth_tr, depth_te = torch.cat([s.depths for s in train_sets]), torch.cat([s.depths for s in test_sets])
    mask_tr, mask_te = depth_tr > 0, depth_te > 0
    norm_tr = torch.cat([camera_normals(s) for s in train_sets])
    norm_te = torch.cat([camera_normals(s) for s in test_sets])
    sem_tr, sem_te = torch.cat([s.semantic for s in train_sets]), torch.cat([s.semantic for s in test_sets])

    fg = _sample(mask_tr, cfg.max_pixels, g)
    x_fg = ftr.reshape(-1, d)[fg]
    std = Standardizer(x_fg)
    x_fg = std(x_fg)
    x_te = std(fte[mask_te])
    w_depth = ridge_fit(x_fg, depth_tr.reshape(-1)[fg].log()[:, None], cfg.ridge)
    pred_depth = ridge_predict(x_te, w_depth)[:, 0].exp()
    dm = depth_metrics(pred_depth, depth_te[mask_te])
    w_norm = ridge_fit(x_fg, norm_tr.reshape(-1, 3)[fg], cfg.ridge)
    nm = normal_metrics(ridge_predict(x_te, w_norm), norm_te[mask_te])

    every = _sample(torch.ones_like(mask_tr), cfg.max_pixels, g)
    x_all, y_all = std(ftr.reshape(-1, d)[every]), sem_tr.reshape(-1)[every]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        linear = nn.Linear(d, cfg.num_classes)
    opt = torch.optim.Adam(linear.parameters(), lr=cfg.seg_lr)
    for _ in range(cfg.seg_steps):
        loss = F.cross_entropy(linear(x_all), y_all)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred_sem = linear(std(fte.reshape(-1, d))).argmax(-1)
    return {"depth_rmse": dm["rmse"], "depth_delta1": dm["delta_1"], "depth_abs_rel": dm["abs_rel"],
            "normal_mean_deg": nm["mean_deg"], "normal_within_11.25": nm["within_11.25"],
            "normal_within_22.5": nm["within_22.5"], "normal_within_30.0": nm["within_30.0"],
            "seg_miou": miou(pred_sem, sem_te.reshape(-1), cfg.num_classes)}


def ground_truth_matches(ds: MultiViewDataset, i: int, j: int, stride: int = 2, rel_tol: float = 0.02
                         ) -> tuple[Float[Tensor, "Q 2"], Float[Tensor, "Q 2"]]:
    """Pixel centres (u, v) of view i (every stride-th pixel with depth) that are visible in view j,
    and where they land in view j. Visibility: the projected camera z agrees with view j's depth at
    the landing pixel within `rel_tol`."""
    h, w = ds.height, ds.width
    vs, us = torch.meshgrid(torch.arange(0, h, stride), torch.arange(0, w, stride), indexing="ij")
    us, vs = us.reshape(-1), vs.reshape(-1)
    d_i = ds.depths[i, vs, us]
    keep = d_i > 0
    us, vs, d_i = us[keep], vs[keep], d_i[keep]
    uv_i = torch.stack([us, vs], -1).float() + 0.5
    world = ds.cameras[i].unproject(uv_i[None], d_i[None])[0]
    uv_j, z_j = ds.cameras[j].project(world)
    uv_j, z_j = uv_j[0], z_j[0]
    px = uv_j.floor().long()
    inside = (z_j > 0) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    px = px.clamp(min=0)
    px[:, 0], px[:, 1] = px[:, 0].clamp(max=w - 1), px[:, 1].clamp(max=h - 1)
    d_j = ds.depths[j, px[:, 1], px[:, 0]]
    visible = inside & (d_j > 0) & ((d_j - z_j).abs() < rel_tol * z_j)
    return uv_i[visible], uv_j[visible]


def match_features(feats_i: Float[Tensor, "H W D"], feats_j: Float[Tensor, "H W D"], uv_i: Float[Tensor, "Q 2"],
                   mask_j: Bool[Tensor, "H W"]) -> Float[Tensor, "Q 2"]:
    """For each query pixel centre of view i, the pixel centre of view j (among `mask_j`) whose
    feature is most cosine-similar."""
    q = F.normalize(feats_i[uv_i[:, 1].long(), uv_i[:, 0].long()], dim=-1)
    cand = torch.nonzero(mask_j)  # (v, u)
    keys = F.normalize(feats_j[cand[:, 0], cand[:, 1]], dim=-1)
    best = (q @ keys.T).argmax(-1)
    return cand[best].flip(-1).float() + 0.5


def correspondence_recall(feats: list[Tensor], datasets: list[MultiViewDataset], cfg: ProbeConfig) -> dict:
    """Recall at each threshold over all view pairs, overall and per viewpoint-change bin."""
    g = torch.Generator().manual_seed(cfg.seed)
    bins = cfg.angle_bins
    scale = datasets[0].width / cfg.reference_size
    errors: list[list[Tensor]] = [[] for _ in range(len(bins) - 1)]
    for f, ds in zip(feats, datasets, strict=True):
        angles = view_angles(ds.cameras)
        pairs = torch.combinations(torch.arange(len(ds)), 2)
        pairs = pairs[torch.randperm(len(pairs), generator=g)[: cfg.pairs_per_world]]
        for i, j in pairs.tolist():
            uv_i, uv_j = ground_truth_matches(ds, i, j, cfg.query_stride)
            if len(uv_i) == 0:
                continue
            pred = match_features(f[i], f[j], uv_i, ds.depths[j] > 0)
            b = max(k for k in range(len(bins) - 1) if float(angles[i, j]) >= bins[k])
            errors[b].append((pred - uv_j).norm(dim=-1))
    out: dict = {"per_bin": {}}
    flat = torch.cat([e for es in errors for e in es]) if any(errors) else torch.zeros(0)
    for t in cfg.thresholds_px:
        out[f"recall@{t:g}px"] = float((flat < t * scale).float().mean()) if len(flat) else float("nan")
    for k, es in enumerate(errors):
        name = f"{bins[k]:g}-{bins[k + 1]:g}deg"
        e = torch.cat(es) if es else torch.zeros(0)
        out["per_bin"][name] = {"queries": len(e), **{f"recall@{t:g}px": float((e < t * scale).float().mean())
                                                       if len(e) else float("nan") for t in cfg.thresholds_px}}
    out["queries"] = len(flat)
    return out


def probe_3d_awareness(encoder: nn.Module, probe_train: list[MultiViewDataset], probe_test: list[MultiViewDataset],
                       cfg: ProbeConfig | None = None) -> dict:
    """All probes of one frozen encoder (images [B,3,H,W] -> features [B,D,h,w])."""
    cfg = cfg or ProbeConfig()
    ftr, fte = extract_features(encoder, probe_train), extract_features(encoder, probe_test)
    return {**dense_probes(ftr, probe_train, fte, probe_test, cfg),
            "correspondence": correspondence_recall(fte, probe_test, cfg)}
