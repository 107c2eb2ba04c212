"""Input encodings shared by the fields: NeRF positional encoding and real spherical harmonics."""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

# Real spherical-harmonics constants (the ones Plenoxels and Instant-NGP use), bands 0..3.
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
MAX_SH_DEGREE = 3


def positional_encoding_dim(in_dim: int, n_frequencies: int, include_input: bool = True) -> int:
    return in_dim * (2 * n_frequencies + int(include_input))


def positional_encoding(x: Float[Tensor, "*B D"], n_frequencies: int, include_input: bool = True
                        ) -> Float[Tensor, "*B E"]:
    """NeRF's gamma(p) = (p, sin(2^k pi p), cos(2^k pi p)) for k < n_frequencies, E = D (2L + 1)."""
    if n_frequencies == 0:
        return x if include_input else x[..., :0]
    freqs = torch.pi * 2.0 ** torch.arange(n_frequencies, device=x.device, dtype=x.dtype)
    angles = rearrange(x[..., None, :] * freqs[:, None], "... l d -> ... (l d)")
    parts = [x] if include_input else []
    return torch.cat([*parts, torch.sin(angles), torch.cos(angles)], dim=-1)


def sh_dim(degree: int) -> int:
    """Number of real SH basis functions of bands 0..degree."""
    return (degree + 1) ** 2


def spherical_harmonics(dirs: Float[Tensor, "*B 3"], degree: int) -> Float[Tensor, "*B K"]:
    """Real SH basis of bands 0..degree (K = (degree+1)^2, degree <= 3) at unit directions.

    Instant-NGP's "degree 4" direction encoding (16 values) is `degree=3` here."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"spherical harmonics degree must be in [0, {MAX_SH_DEGREE}], got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [_C2[0] * x * y, _C2[1] * y * z, _C2[2] * (2 * zz - xx - yy), _C2[3] * x * z,
                _C2[4] * (xx - yy)]
    if degree >= 3:
        out += [_C3[0] * y * (3 * xx - yy), _C3[1] * x * y * z, _C3[2] * y * (4 * zz - xx - yy),
                _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy),
                _C3[5] * z * (xx - yy), _C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def corner_combine(per_axis: Tensor, combine) -> Tensor:
    """Combine per-axis values [..., 3, 2] (lower, upper corner) over the 8 corners of a cell with
    `combine` (mul for trilinear weights, add or xor for indices): [..., 8], x slowest, z fastest."""
    x, y, z = per_axis.unbind(-2)
    out = combine(combine(x[..., :, None, None], y[..., None, :, None]), z[..., None, None, :])
    return rearrange(out, "... a b c -> ... (a b c)")


def cell_corners(u: Float[Tensor, "*B 3"], res: Tensor) -> tuple[Tensor, Float[Tensor, "*B 3 2"]]:
    """For u in [0,1]^3 on a grid of `res` vertices per axis ([3] or broadcastable [..., 3]): the
    integer corner coordinates [..., 3, 2] of the enclosing cell and the linear weights [..., 3, 2]."""
    pos = u * (res - 1)
    cell = torch.minimum(pos.floor().long(), res - 2)
    frac = pos - cell
    return torch.stack([cell, cell + 1], dim=-1), torch.stack([1 - frac, frac], dim=-1)


def trilinear_interpolate(table: Float[Tensor, "V C"], res: tuple[int, int, int], u: Float[Tensor, "*B 3"]
                          ) -> Float[Tensor, "*B C"]:
    """Trilinear interpolation of a channels-last voxel table (voxel (i, j, k) at row i + rx (j + ry k),
    vertices at the box corners) at u in [0,1]^3: one index_select for all 8 corners, whose backward
    (index_add) is much faster on CPU than grid_sample's."""
    batch = u.shape[:-1]
    u = u.reshape(-1, 3)
    rx, ry, _ = res
    coords, w = cell_corners(u, torch.tensor(res, device=u.device))
    strides = torch.tensor([1, rx, rx * ry], device=u.device)
    index = corner_combine(coords * strides[:, None], torch.add)                  # [P,8]
    values = rearrange(table.index_select(0, index.flatten()), "(p c) f -> p c f", c=8)
    out = torch.einsum("pc,pcf->pf", corner_combine(w, torch.mul), values)
    return out.reshape(*batch, table.shape[-1])
