"""`rasterization(...)`: gsplat's call signature and return values on our CPU backends.

Code written against `gsplat.rasterization` (gsplat 1.5) runs unchanged for what this covers: one set of
N Gaussians (no leading batch dimensions), C pinhole cameras (`viewmats` world-to-camera, OpenCV axes),
post-activation colours [N,D] / [C,N,D] or SH coefficients [N,K,3] / [C,N,K,3] with `sh_degree`,
`render_mode` "RGB", "D", "ED", "RGB+D", "RGB+ED", `backgrounds` [C,D], `rasterize_mode` "classic" or
"antialiased" (opacities times gsplat's compensation sqrt(det(cov2d) / det(cov2d + eps2d I))), and
packed=False. Semantics follow gsplat's python: SH colours are clamp_min(sh + 0.5, 0) seen from the
camera centre, the depth channel is camera z (expected depth sum(w z) / alpha for "ED"), the depth
channel's background is 0. Other gsplat options raise a ValueError naming the argument.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from scene3d.gaussians.rasterize import Backend, composite, project, resolve_backend
from scene3d.gaussians.sh import eval_sh

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
_DEFAULTS = {"radius_clip": 0.0, "sparse_grad": False, "absgrad": False, "distributed": False,
             "camera_model": "pinhole", "segmented": False, "covars": None, "with_ut": False, "with_eval3d": False,
             "radial_coeffs": None, "tangential_coeffs": None, "thin_prism_coeffs": None, "ftheta_coeffs": None,
             "viewmats_rs": None}


def _colors(colors: Tensor, sh_degree: int | None, means: Tensor, viewmats: Tensor) -> Float[Tensor, "C N D"]:
    n_cams = len(viewmats)
    if sh_degree is None:
        return colors if colors.ndim == 3 else colors[None].expand(n_cams, -1, -1)
    campos = torch.inverse(viewmats)[:, :3, 3]
    dirs = means[None] - campos[:, None]  # [C, N, 3]
    shs = colors if colors.ndim == 4 else colors[None].expand(n_cams, -1, -1, -1)
    return torch.clamp_min(eval_sh(sh_degree, shs, dirs) + 0.5, 0.0)


def rasterization(means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
                  opacities: Float[Tensor, " N"], colors: Tensor, viewmats: Float[Tensor, "C 4 4"],
                  Ks: Float[Tensor, "C 3 3"], width: int, height: int, near_plane: float = 0.01,
                  far_plane: float = 1e10, eps2d: float = 0.3, sh_degree: int | None = None, packed: bool = False,
                  tile_size: int = 16, backgrounds: Tensor | None = None, render_mode: RenderMode = "RGB",
                  rasterize_mode: Literal["classic", "antialiased"] = "classic", channel_chunk: int = 32,
                  backend: Backend = "auto", **gsplat_options: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """gsplat.rasterization on CPU -> (render_colors [C,H,W,X], render_alphas [C,H,W,1], meta). X is D for
    "RGB", 1 for "D"/"ED", D+1 for "RGB+D"/"RGB+ED". `meta["means2d"]` [C,N,2] takes `.retain_grad()` for
    densification statistics; `channel_chunk` is accepted and unused (every channel is composited at once).
    `backend` ("auto": compiled on CPU, else torch; or "dense") is ours, not gsplat's."""
    for name, value in gsplat_options.items():
        if name not in _DEFAULTS:
            raise TypeError(f"rasterization() got an unexpected keyword argument {name!r}")
        if value is not _DEFAULTS[name] and value != _DEFAULTS[name]:
            raise ValueError(f"rasterization: {name}={value!r} is not supported on this backend "
                             f"(only {name}={_DEFAULTS[name]!r})")
    if packed:
        raise ValueError("rasterization: packed=True is not supported on this backend; pass packed=False")
    if means.ndim != 2 or viewmats.ndim != 3:
        raise ValueError(f"rasterization: means must be [N,3] and viewmats [C,4,4] (no batch dimensions), got "
                         f"{tuple(means.shape)} and {tuple(viewmats.shape)}")
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"rasterization: unknown render_mode {render_mode!r}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterization: unknown rasterize_mode {rasterize_mode!r}")
    kind = resolve_backend(backend, means.device, gsplat=False, dtype=means.dtype)
    if kind == "gsplat":
        raise ValueError("rasterization: backend 'gsplat' is gsplat.rasterization itself; call it directly")
    n_cams = len(viewmats)
    proj = project(means, quats, scales, viewmats, Ks, width, height, kind, eps2d, near_plane, far_plane)
    opac = opacities[None].expand(n_cams, -1)
    if rasterize_mode == "antialiased":
        a, b, c = proj.cov2d.unbind(-1)
        det_orig = (a - eps2d) * (c - eps2d) - b * b
        opac = opac * torch.sqrt(torch.clamp(det_orig / (a * c - b * b).clamp(min=1e-10), min=0.0))
    depth = proj.depths[..., None]
    if render_mode in ("D", "ED"):
        feats, bg = depth, None if backgrounds is None else backgrounds.new_zeros(n_cams, 1)
    else:
        feats = _colors(colors, sh_degree, means, viewmats)
        bg = backgrounds
        if render_mode != "RGB":
            feats = torch.cat([feats, depth], dim=-1)
            bg = None if bg is None else torch.cat([bg, bg.new_zeros(n_cams, 1)], dim=-1)
    acc, alpha = composite(proj, opac, feats, width, height, kind, tile_size=tile_size)
    render = acc if bg is None else acc + (1.0 - alpha)[..., None] * bg[:, None, None, :]
    if render_mode in ("ED", "RGB+ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha[..., None].clamp(min=1e-10)], dim=-1)
    meta = {"batch_ids": None, "camera_ids": None, "gaussian_ids": None, "radii": proj.radii,
            "means2d": proj.means2d, "depths": proj.depths, "conics": proj.conics, "opacities": opac,
            "width": width, "height": height, "tile_size": tile_size, "n_batches": 1, "n_cameras": n_cams}
    return render, alpha[..., None], meta
