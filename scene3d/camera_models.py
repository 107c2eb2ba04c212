"""Lens models: the forward distortion of normalised image coordinates and its iterative inverse.

Normalised coordinates are (x, y) = (X / Z, Y / Z) for a camera-space point (OpenCV axes); a pixel is
(u, v) = (fx * xd + cx, fy * yd + cy) where (xd, yd) = distort((x, y)). Three lens families cover the
camera models of COLMAP and nerfstudio (`MODELS`), with parameters in nerfstudio's layout
`distortion = [k1, k2, k3, k4, p1, p2]` (`[N, 6]`, one row per camera):

- PINHOLE: no distortion (all six zero).
- OPENCV: radial polynomial d = 1 + k1 r^2 + k2 r^4 + k3 r^6 + k4 r^8 (k4 is nerfstudio's extension; its
  readers never set it) and tangential p1, p2, as OpenCV's `projectPoints`:
  xd = x d + 2 p1 x y + p2 (r^2 + 2 x^2), yd = y d + 2 p2 x y + p1 (r^2 + 2 y^2).
- OPENCV_FISHEYE: Kannala-Brandt, as OpenCV's `fisheye` module and COLMAP: theta = atan(r),
  theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8), (xd, yd) = theta_d / r (x, y).

Undistortion is Newton's method from the distorted point (nerfstudio's `radial_and_tangential_undistort`
for OPENCV, a 1-D Newton on theta for the fisheye), run in float64 to a residual below 1e-12.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

LENSES = ("PINHOLE", "OPENCV", "OPENCV_FISHEYE")

# camera model name (COLMAP / nerfstudio) -> (lens, distortion keys it may carry)
MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "PINHOLE": ("PINHOLE", ()),
    "SIMPLE_PINHOLE": ("PINHOLE", ()),
    "SIMPLE_RADIAL": ("OPENCV", ("k1",)),
    "RADIAL": ("OPENCV", ("k1", "k2")),
    "OPENCV": ("OPENCV", ("k1", "k2", "k3", "p1", "p2")),
    "OPENCV_FISHEYE": ("OPENCV_FISHEYE", ("k1", "k2", "k3", "k4")),
}
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")  # the columns of `distortion`

_MAX_ITERATIONS = 20
_TOLERANCE = 1e-12


def distortion_vector(values: dict[str, float]) -> Float[Tensor, "6"]:
    """[k1, k2, k3, k4, p1, p2] from a dict of the keys present (absent keys are 0)."""
    return torch.tensor([float(values.get(k, 0.0)) for k in DISTORTION_KEYS])


def distort(xy: Float[Tensor, "*B 2"], params: Float[Tensor, "*B 6"], lens: str) -> Float[Tensor, "*B 2"]:
    """Normalised undistorted coordinates -> distorted ones (the forward lens model)."""
    if lens == "PINHOLE":
        return xy
    x, y = xy[..., 0], xy[..., 1]
    k1, k2, k3, k4, p1, p2 = params.unbind(-1)
    r2 = x * x + y * y
    if lens == "OPENCV":
        d = 1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
        return torch.stack([x * d + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                            y * d + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)], dim=-1)
    if lens == "OPENCV_FISHEYE":
        r = r2.sqrt()
        theta = torch.atan(r)
        t2 = theta * theta
        theta_d = theta * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
        # theta_d / r -> 1 as r -> 0
        ratio = torch.where(r > 1e-12, theta_d / r.clamp_min(1e-12), torch.ones_like(r))
        return xy * ratio[..., None]
    raise ValueError(f"unknown lens {lens!r}; expected one of {LENSES}")


def undistort(xy_d: Float[Tensor, "*B 2"], params: Float[Tensor, "*B 6"], lens: str) -> Float[Tensor, "*B 2"]:
    """Distorted normalised coordinates -> undistorted ones (Newton's method, in float64).

    For OPENCV_FISHEYE the result is tan(theta) times the unit direction: finite only inside a 180 degree field of
    view (theta < pi / 2), which every ray-direction with z = 1 needs.
    """
    if lens == "PINHOLE":
        return xy_d
    dtype = xy_d.dtype
    xy_d, params = xy_d.double(), params.double()
    k1, k2, k3, k4, p1, p2 = params.unbind(-1)
    if lens == "OPENCV":
        xd, yd = xy_d[..., 0], xy_d[..., 1]
        x, y = xd.clone(), yd.clone()
        for _ in range(_MAX_ITERATIONS):
            r2 = x * x + y * y
            d = 1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
            fx = d * x + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
            fy = d * y + 2 * p2 * x * y + p1 * (r2 + 2 * y * y) - yd
            d_r = k1 + r2 * (2.0 * k2 + r2 * (3.0 * k3 + r2 * 4.0 * k4))
            d_x, d_y = 2.0 * x * d_r, 2.0 * y * d_r
            fx_x = d + d_x * x + 2.0 * p1 * y + 6.0 * p2 * x
            fx_y = d_y * x + 2.0 * p1 * x + 2.0 * p2 * y
            fy_x = d_x * y + 2.0 * p2 * y + 2.0 * p1 * x
            fy_y = d + d_y * y + 2.0 * p2 * x + 6.0 * p1 * y
            det = fx_x * fy_y - fx_y * fy_x
            ok = det.abs() > 1e-12
            safe = torch.where(ok, det, torch.ones_like(det))
            x = x - torch.where(ok, (fx * fy_y - fy * fx_y) / safe, torch.zeros_like(det))
            y = y - torch.where(ok, (fy * fx_x - fx * fy_x) / safe, torch.zeros_like(det))
            if fx.numel() == 0 or max(fx.abs().max(), fy.abs().max()) < _TOLERANCE:
                break
        return torch.stack([x, y], dim=-1).to(dtype)
    if lens == "OPENCV_FISHEYE":
        theta_d = xy_d.norm(dim=-1)
        theta = theta_d.clone()
        for _ in range(_MAX_ITERATIONS):
            t2 = theta * theta
            f = theta * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - theta_d
            df = 1.0 + t2 * (3.0 * k1 + t2 * (5.0 * k2 + t2 * (7.0 * k3 + t2 * 9.0 * k4)))
            theta = theta - f / df
            if f.numel() == 0 or f.abs().max() < _TOLERANCE:
                break
        ratio = torch.where(theta_d > 1e-12, torch.tan(theta) / theta_d.clamp_min(1e-12), torch.ones_like(theta))
        return (xy_d * ratio[..., None]).to(dtype)
    raise ValueError(f"unknown lens {lens!r}; expected one of {LENSES}")
