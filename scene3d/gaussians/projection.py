"""EWA projection of 3D Gaussians to 2D screen-space Gaussians (pinhole, OpenCV axes).

Follows gsplat's `fully_fused_projection` exactly (tests compare with its pure-torch reference):
camera-space covariance R S S^T R^T, the perspective Jacobian J evaluated at the mean (with the
mean clamped to 1.3x the field of view as in 3DGS), cov2d = J cov J^T + eps2d * I, conic = cov2d^-1,
radii = ceil(3.33 sigma) per image axis, zeroed for Gaussians outside [near, far] or off-screen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from scene3d.rotations import quat_to_rotmat


@dataclass
class Projected:
    """Screen-space Gaussians for C cameras: everything is [C, N, ...]."""

    means2d: Float[Tensor, "C N 2"]
    conics: Float[Tensor, "C N 3"]  # upper triangle (a, b, c) of the inverse 2D covariance
    depths: Float[Tensor, "C N"]  # camera z
    radii: Int[Tensor, "C N 2"]  # pixel half-extents; 0 = culled
    cov2d: Float[Tensor, "C N 3"]  # (xx, xy, yy) of the 2D covariance, eps2d included


def covariance_3d(quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3 3"]:
    """Sigma = R S S^T R^T."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def project_gaussians(means: Float[Tensor, "N 3"], covars: Float[Tensor, "N 3 3"], w2c: Float[Tensor, "C 4 4"],
                      K: Float[Tensor, "C 3 3"], width: int, height: int, eps2d: float = 0.3,
                      near_plane: float = 0.01, far_plane: float = 1e10) -> Projected:
    """Differentiable EWA splatting of N Gaussians into C pinhole cameras."""
    rot, trans = w2c[:, :3, :3], w2c[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", rot, means) + trans[:, None, :]
    covars_c = torch.einsum("cij,njk,clk->cnil", rot, covars, rot)
    tx, ty, tz = means_c.unbind(-1)
    depth_ok = (tz > near_plane) & (tz < far_plane)
    tz_safe = torch.where(depth_ok, tz, torch.ones_like(tz))  # keeps culled Gaussians finite

    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    tx_c = tz_safe * torch.clamp(tx / tz_safe, min=-lim_x_neg, max=lim_x_pos)
    ty_c = tz_safe * torch.clamp(ty / tz_safe, min=-lim_y_neg, max=lim_y_pos)

    zero = torch.zeros_like(tz)
    jac = torch.stack([fx / tz_safe, zero, -fx * tx_c / tz_safe**2,
                       zero, fy / tz_safe, -fy * ty_c / tz_safe**2], dim=-1).unflatten(-1, (2, 3))
    cov2d = jac @ covars_c @ jac.transpose(-1, -2)
    a = cov2d[..., 0, 0] + eps2d
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    det_safe = det.clamp(min=1e-10)
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    means2d = torch.stack([fx * tx / tz_safe + cx, fy * ty / tz_safe + cy], dim=-1)
    radii = torch.ceil(3.33 * torch.sqrt(torch.stack([a, c], dim=-1).detach().clamp_min(0)))
    inside = ((means2d[..., 0] + radii[..., 0] > 0) & (means2d[..., 0] - radii[..., 0] < width)
              & (means2d[..., 1] + radii[..., 1] > 0) & (means2d[..., 1] - radii[..., 1] < height))
    keep = depth_ok & (det > 0) & inside
    radii = torch.where(keep[..., None], radii, torch.zeros_like(radii)).int()
    cov2d3 = torch.stack([a, b, c], dim=-1)
    return Projected(means2d=means2d, conics=conics, depths=tz, radii=radii, cov2d=cov2d3)
