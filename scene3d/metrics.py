"""Image, depth, normal and segmentation metrics.

Images are [..., H, W, 3] (channels last, the library's layout) with values in [0, 1].
SSIM follows Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, data
range 1, valid ("no padding") windows, mean over channels and positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor


def psnr(pred: Float[Tensor, "*B H W C"], target: Float[Tensor, "*B H W C"], data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB over all elements (one number)."""
    mse = F.mse_loss(pred.float(), target.float())
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-20))


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(pred: Float[Tensor, "*B H W C"], target: Float[Tensor, "*B H W C"], data_range: float = 1.0,
             window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Float[Tensor, "B C h w"]:
    """Local SSIM at every valid window position (differentiable; D-SSIM losses use its mean). Images
    smaller than the window use the largest odd window that fits (1x1 images: a 1-pixel window)."""
    x = rearrange(pred.float(), "... h w c -> (...) c h w")
    y = rearrange(target.float(), "... h w c -> (...) c h w")
    channels = x.shape[1]
    window = min(window, *x.shape[-2:])
    window -= 1 - window % 2
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    kernel_h = g.view(1, 1, 1, -1).expand(channels, 1, 1, window)
    kernel_v = g.view(1, 1, -1, 1).expand(channels, 1, window, 1)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(z, kernel_h, groups=channels), kernel_v, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(pred: Float[Tensor, "*B H W C"], target: Float[Tensor, "*B H W C"], data_range: float = 1.0) -> Tensor:
    """Mean structural similarity (one number) with an 11-pixel Gaussian window (smaller for smaller images)."""
    return ssim_map(pred, target, data_range).mean()


def depth_metrics(pred: Float[Tensor, "*B"], target: Float[Tensor, "*B"],
                  mask: Bool[Tensor, "*B"] | None = None) -> dict[str, float]:
    """Standard monocular-depth errors over pixels where `mask` (default: target > 0):
    abs_rel, sq_rel, rmse, rmse_log, and delta < 1.25^k accuracies."""
    valid = target > 0 if mask is None else mask & (target > 0)
    p, t = pred[valid].double().clamp_min(1e-8), target[valid].double()
    if p.numel() == 0:
        raise ValueError("depth_metrics: no valid pixels")
    ratio = torch.maximum(p / t, t / p)
    return {
        "abs_rel": float(((p - t).abs() / t).mean()),
        "sq_rel": float(((p - t) ** 2 / t).mean()),
        "rmse": float(((p - t) ** 2).mean().sqrt()),
        "rmse_log": float(((p.log() - t.log()) ** 2).mean().sqrt()),
        **{f"delta_{k}": float((ratio < 1.25**k).double().mean()) for k in (1, 2, 3)},
    }


def normal_metrics(pred: Float[Tensor, "*B 3"], target: Float[Tensor, "*B 3"],
                   mask: Bool[Tensor, "*B"] | None = None) -> dict[str, float]:
    """Angular errors in degrees between normals (normalised here): mean, median, and the fraction
    under 11.25, 22.5 and 30 degrees."""
    valid = target.norm(dim=-1) > 0 if mask is None else mask
    p = F.normalize(pred[valid].double(), dim=-1)
    t = F.normalize(target[valid].double(), dim=-1)
    if p.shape[0] == 0:
        raise ValueError("normal_metrics: no valid pixels")
    angle = torch.rad2deg(torch.acos((p * t).sum(-1).clamp(-1, 1)))
    return {
        "mean_deg": float(angle.mean()),
        "median_deg": float(angle.median()),
        **{f"within_{th}": float((angle < th).double().mean()) for th in (11.25, 22.5, 30.0)},
    }


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """[C, C] counts, rows = target, columns = prediction."""
    idx = target.flatten().long() * num_classes + pred.flatten().long()
    return torch.bincount(idx, minlength=num_classes**2).view(num_classes, num_classes)


def miou(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """Mean IoU over the classes present in prediction or target."""
    cm = confusion_matrix(pred, target, num_classes).double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else float("nan")
