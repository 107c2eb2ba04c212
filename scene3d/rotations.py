"""Rotations as unit quaternions (w, x, y, z), the convention of 3DGS, gsplat, COLMAP and viser: one
implementation for the whole project (Gaussians, COLMAP poses, camera paths, the viewer).

    R = quat_to_rotmat(q)                 # [..., 4] -> [..., 3, 3]
    q = rotmat_to_quat(R)                 # w >= 0
    q = slerp(q0, q1, t)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


def quat_to_rotmat(quats: Float[Tensor, "*B 4"]) -> Float[Tensor, "*B 3 3"]:
    """Rotation matrices from (not necessarily unit) wxyz quaternions."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def rotmat_to_quat(rot: Float[Tensor, "*B 3 3"]) -> Float[Tensor, "*B 4"]:
    """Unit wxyz quaternions (w >= 0) of rotation matrices (Shepperd's method, branch-free via the largest
    of the four candidate denominators)."""
    m = rot
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack([
        torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], -2)  # [..., 4 candidates, 4]; candidate k has its k-th entry = 4 q_k^2
    diag = torch.diagonal(cands, dim1=-2, dim2=-1)
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: Float[Tensor, "*B 4"], b: Float[Tensor, "*B 4"]) -> Float[Tensor, "*B 4"]:
    """Hamilton product a * b of wxyz quaternions (the rotation b, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def slerp(q0: Float[Tensor, "*B 4"], q1: Float[Tensor, "*B 4"], t: float | Tensor) -> Float[Tensor, "*B 4"]:
    """Spherical linear interpolation of unit quaternions along the shorter arc (t=0: q0, t=1: q1)."""
    q1 = torch.where((q0 * q1).sum(-1, keepdim=True) < 0, -q1, q1)
    cos = (q0 * q1).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    t = torch.as_tensor(t, dtype=q0.dtype)
    angle = torch.acos(cos)
    sin = torch.sin(angle)
    near = sin < 1e-6  # nearly equal: linear interpolation is exact to first order
    w0 = torch.where(near, 1 - t, torch.sin((1 - t) * angle) / torch.where(near, 1.0, sin))
    w1 = torch.where(near, t, torch.sin(t * angle) / torch.where(near, 1.0, sin))
    return F.normalize(w0 * q0 + w1 * q1, dim=-1)
