"""A Gaussian scene moved by a similarity transform (a capture's normalisation undone for export).

Means map as points; rotations are composed with the transform's rotation (quaternions wxyz); scales are
multiplied by its scale; SH colours are rotated band by band: with directions d in the new frame, the old
colour at R^T d equals sum_k c'_k Y_k(d) for c' = M_l c per band l, where M_l solves Y_l(d) M_l = Y_l(R^T d)
in least squares over sample directions (exact: each band is closed under rotation).
"""

from __future__ import annotations

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from scene3d.data.frame import SceneTransform
from scene3d.gaussians.scene import GaussianScene
from scene3d.gaussians.sh import sh_bases
from scene3d.rotations import quat_multiply, rotmat_to_quat


def sh_rotation(rotation: Float[Tensor, "3 3"], degree: int) -> Float[Tensor, "K K"]:
    """M [K,K] (K = (degree+1)^2, block diagonal by band) with colours(c) at R^T d == colours(M c) at d."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(256, 3, generator=g, dtype=torch.float64), dim=-1)
    rot = rotation.double()
    new, old = sh_bases(degree, dirs), sh_bases(degree, dirs @ rot)  # Y(d), Y(R^T d)
    m = torch.zeros(new.shape[1], new.shape[1], dtype=torch.float64)
    for band in range(degree + 1):
        s = slice(band * band, (band + 1) ** 2)
        m[s, s] = torch.linalg.pinv(new[:, s]) @ old[:, s]  # not lstsq: its CPU result varies between calls
    return m


def transform_scene(scene: GaussianScene, frame: SceneTransform) -> GaussianScene:
    """`scene` with every Gaussian moved by `frame` (x -> scale * (R x + t)); features are left as they are."""
    rot = frame.rotation.double()
    p = {k: v.detach().double() for k, v in scene.params.items()}
    p["means"] = frame.points(p["means"])
    p["quats"] = quat_multiply(rotmat_to_quat(rot.double()).expand_as(p["quats"]),
                               torch.nn.functional.normalize(p["quats"], dim=-1))
    p["log_scales"] = p["log_scales"] + torch.log(torch.tensor(frame.scale, dtype=torch.float64))
    if not scene.is_feature_scene and scene.sh_degree > 0:
        m = sh_rotation(rot, scene.sh_degree)  # the new colour at d is the old one at R^T d
        coeffs = einsum(m, scene.sh_coeffs.detach().double(), "k j, n j c -> n k c")
        p["sh0"], p["shN"] = coeffs[:, :1], coeffs[:, 1:]
    dtype = scene.means.dtype
    return GaussianScene(**{k: v.to(dtype) for k, v in p.items()})
