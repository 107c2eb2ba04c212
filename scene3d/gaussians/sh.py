"""Real spherical harmonics up to degree 3, in the convention of 3DGS / gsplat.

Colours are `max(eval_sh(coeffs, dirs) + 0.5, 0)` (the +0.5 offset makes an all-zero scene grey).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
      -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_bases(degree: int, dirs: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B K"]:
    """The (degree+1)^2 basis functions at unit directions `dirs`."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree > 0:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree > 1:
        xx, yy, zz = x * x, y * y, z * z
        out += [C2[0] * x * y, C2[1] * y * z, C2[2] * (2 * zz - xx - yy), C2[3] * x * z, C2[4] * (xx - yy)]
    if degree > 2:
        out += [C3[0] * y * (3 * xx - yy), C3[1] * x * y * z, C3[2] * y * (4 * zz - xx - yy),
                C3[3] * z * (2 * zz - 3 * xx - 3 * yy), C3[4] * x * (4 * zz - xx - yy),
                C3[5] * z * (xx - yy), C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, coeffs: Float[Tensor, "*B K D"], dirs: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B D"]:
    """Sum of the first (degree+1)^2 coefficients times the bases at normalised `dirs`."""
    k = num_sh_bases(degree)
    if coeffs.shape[-2] < k:
        raise ValueError(f"degree {degree} needs {k} SH coefficients, got {coeffs.shape[-2]}")
    bases = sh_bases(degree, torch.nn.functional.normalize(dirs, dim=-1))
    return torch.einsum("...k,...kd->...d", bases, coeffs[..., :k, :])


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """DC coefficient whose colour (after the +0.5 offset) is `rgb`."""
    return (rgb - 0.5) / C0


def sh_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * C0 + 0.5
