"""Real-data check of a depth predictor on a rectified stereo pair, next to classical block matching.

Pair: Middlebury 2014 Motorcycle as `skimage.data.stereo_motorcycle()` ships it (500 x 741 RGB, left-view
disparity in pixels, +inf where invalid; a left pixel x matches the right pixel x - d). Both images are
area-downscaled by an integer factor and the disparity too (a block is valid only if all its pixels are;
its disparity is their mean / factor). Rectified cameras: identity rotation, the right camera `baseline`
along +x, focal `focal` px, so depth = focal * baseline / disparity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.distill.splat.mvs import MVSDepthNet, predict_depth, predict_raw_depth


@dataclass
class StereoPair:
    left: Float[Tensor, "H W 3"]  # in [0, 1]
    right: Float[Tensor, "H W 3"]
    disparity: Float[Tensor, "H W"]  # left view, pixels at this resolution; 0 where invalid
    valid: Bool[Tensor, "H W"]
    downscale: int  # this resolution = full resolution / downscale


def load_motorcycle(downscale: int = 4) -> StereoPair:
    """Motorcycle, cropped to a multiple of 2 * downscale and area-downscaled by `downscale`."""
    if downscale < 1:
        raise ValueError(f"downscale must be at least 1, got {downscale}")
    from skimage.data import stereo_motorcycle

    left, right, disp = stereo_motorcycle()
    m = 2 * downscale
    h, w = disp.shape[0] // m * m, disp.shape[1] // m * m
    ok = np.isfinite(disp[:h, :w]) & (disp[:h, :w] > 0)
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a[:h, :w])).float()  # noqa: E731
    pool = lambda t: F.avg_pool2d(t, downscale)  # noqa: E731
    images = pool(rearrange(torch.stack([to(left), to(right)]) / 255, "v h w c -> v c h w"))
    valid = pool(to(ok)[None, None])[0, 0] == 1
    gt = torch.where(to(ok) > 0, to(np.nan_to_num(disp, posinf=0.0)), 0.0)
    d = pool(gt[None, None])
    return StereoPair(*rearrange(images, "v c h w -> v h w c"), torch.where(valid, d[0, 0] / downscale, 0.0), valid,
                      downscale)


def rectified_cameras(height: int, width: int, focal: float, baseline: float = 1.0) -> Cameras:
    """[left, right] pinhole cameras of a rectified pair (right camera at +baseline along x)."""
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, 0, 3] = baseline
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    return Cameras(c2w, K, width, height)


def block_matching(left: Float[Tensor, "H W 3"], right: Float[Tensor, "H W 3"], min_disp: int, max_disp: int,
                   window: int = 7, cost: Literal["sad", "ncc"] = "sad") -> Float[Tensor, "H W"]:
    """Winner-take-all integer disparity of the left view: SAD or zero-mean NCC of grey `window` x `window`
    patches against the right view shifted by every d in [min_disp, max_disp] (shifts past the border lose)."""
    if window % 2 == 0 or window < 1:
        raise ValueError(f"window must be an odd positive size, got {window}")
    if not 0 <= min_disp <= max_disp:
        raise ValueError(f"disparity range must satisfy 0 <= min_disp <= max_disp, got [{min_disp}, {max_disp}]")
    gl, gr = left.mean(-1)[None, None], right.mean(-1)[None, None]
    box = lambda t: F.avg_pool2d(t, window, 1, window // 2, count_include_pad=False)  # noqa: E731
    if cost == "ncc":
        mean_l = box(gl)
        std_l = (box(gl * gl) - mean_l**2).clamp_min(1e-6).sqrt()
    costs = []
    w = gl.shape[-1]
    for d in range(min_disp, max_disp + 1):
        shifted = F.pad(gr[..., : w - d], (d, 0))  # shifted[x] = right[x - d]
        if cost == "sad":
            c = box((gl - shifted).abs())
        else:
            m_r = box(shifted)
            std_r = (box(shifted * shifted) - m_r**2).clamp_min(1e-6).sqrt()
            c = -(box(gl * shifted) - mean_l * m_r) / (std_l * std_r)
        c[..., :d] = torch.inf
        costs.append(c[0, 0])
    return torch.stack(costs).argmin(0).float() + min_disp


def disparity_metrics(pred: Float[Tensor, "H W"], gt: Float[Tensor, "H W"], valid: Bool[Tensor, "H W"],
                      downscale: int = 1) -> dict[str, float]:
    """End-point error and bad-pixel rates over valid pixels, at this resolution (`epe`, `bad_1px`, `bad_3px`)
    and at full resolution (errors x downscale: `epe_full`, `bad_3px_full`)."""
    err = (pred - gt)[valid].abs().double()
    return {"epe": float(err.mean()), "bad_1px": float((err > 1).double().mean()),
            "bad_3px": float((err > 3).double().mean()), "epe_full": float(err.mean() * downscale),
            "bad_3px_full": float((err * downscale > 3).double().mean())}


def predictor_disparity(net: MVSDepthNet, pair: StereoPair, min_disp: float, max_disp: float,
                        focal: float | None = None) -> tuple[Float[Tensor, "H W"], Float[Tensor, "H W"]]:
    """(disparity, raw cost-volume argmin disparity) of the left view by `predict_depth` on the rectified pair,
    its depth planes spanning [min_disp, max_disp] (focal: default the image width; the baseline is 1)."""
    if not 0 < min_disp < max_disp:
        raise ValueError(f"disparity range must satisfy 0 < min_disp < max_disp, got [{min_disp}, {max_disp}]")
    h, w = pair.disparity.shape
    f = float(w) if focal is None else focal
    cams = rectified_cameras(h, w, f)
    images = torch.stack([pair.left, pair.right])
    depth, _ = predict_depth(net, images, cams, near=f / max_disp, far=f / min_disp)
    raw = predict_raw_depth(net, images, cams, near=f / max_disp, far=f / min_disp)
    return f / depth[0], f / raw[0]
