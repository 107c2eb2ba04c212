"""A pinhole copy of a dataset taken with a distorted lens (what Gaussians, which render pinhole, train on).

Each pixel centre of the pinhole camera (same pose, intrinsics `K` times `focal_scale` for the focal lengths,
same size) is sent through the lens's forward model into the source image and sampled there: colours
bilinearly, depths, masks, normals and labels at the nearest pixel. Pixels whose source falls outside the
image are marked invalid in `masks` (created when the dataset had none).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from scene3d.camera_models import distort
from scene3d.cameras import Cameras
from scene3d.data.dataset import MultiViewDataset


def pinhole_cameras(cameras: Cameras, focal_scale: float = 1.0) -> Cameras:
    """The pinhole cameras of the undistorted copy: same poses and size, focal lengths times `focal_scale`."""
    K = cameras.K.clone()
    K[:, 0, 0] *= focal_scale
    K[:, 1, 1] *= focal_scale
    return Cameras(cameras.c2w, K, cameras.width, cameras.height)


def source_pixels(cameras: Cameras, target: Cameras) -> Float[Tensor, "N H W 2"]:
    """Where each pixel centre of the pinhole `target` lies in the distorted `cameras`' images (u, v)."""
    uv = rearrange(target.pixel_centers(), "h w c -> 1 (h w) c")
    xy = (uv - target.K[:, None, :2, 2]) / torch.stack([target.K[:, 0, 0], target.K[:, 1, 1]], -1)[:, None]
    xy_d = distort(xy, cameras.distortion[:, None, :], cameras.lens)
    src = xy_d * torch.stack([cameras.K[:, 0, 0], cameras.K[:, 1, 1]], -1)[:, None] + cameras.K[:, None, :2, 2]
    return rearrange(src, "n (h w) c -> n h w c", h=target.height)


def _sample(x: Tensor, grid: Tensor, mode: str) -> Tensor:
    """x [N,H,W] or [N,H,W,C] sampled at grid [N,H,W,2] (in [-1, 1]) -> same layout."""
    squeeze = x.ndim == 3
    src = rearrange(x, "n h w -> n 1 h w") if squeeze else rearrange(x, "n h w c -> n c h w")
    out = F.grid_sample(src.double(), grid.double(), mode=mode, padding_mode="border", align_corners=False)
    out = out[:, 0] if squeeze else rearrange(out, "n c h w -> n h w c")
    return out.to(x.dtype)


def undistort_dataset(ds: MultiViewDataset, focal_scale: float = 1.0) -> MultiViewDataset:
    """A pinhole copy of `ds` (returned unchanged when its cameras are already pinhole)."""
    cams = ds.cameras
    if cams.is_pinhole:
        return ds
    target = pinhole_cameras(cams, focal_scale)
    src = source_pixels(cams, target)
    size = torch.tensor([cams.width, cams.height]).to(src)
    grid = src / size * 2 - 1
    inside = ((src >= 0) & (src <= size)).all(-1)
    out = {"images": _sample(ds.images, grid, "bilinear")}
    for name in ("depths", "normals", "semantic", "instance"):
        value = getattr(ds, name)
        if value is not None:
            out[name] = _sample(value, grid, "nearest")
    masks = inside if ds.masks is None else inside & _sample(ds.masks, grid, "nearest")
    return replace(ds, cameras=target, masks=masks, **out)
