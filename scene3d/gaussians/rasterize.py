"""`rasterize(scene, cameras)`: one entry point, four backends.

- "compiled": the C++/OpenMP kernels of compiled.py (projection, tile binning, compositing); CPU only.
  Cameras that need gradients are projected by projection.py (the compiled projection gives none).
- "torch": our tiled pure-torch rasterizer (projection.py -> tiles.py -> composite.py), any device;
  the reference of "compiled" and its fallback.
- "gsplat": `gsplat.rasterization` (CUDA kernels), same conventions and outputs; CUDA only.
- "dense": the brute-force reference (reference.py), for tests and benchmarks.
"auto" picks gsplat on a CUDA device, else compiled when its kernel builds, else torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.gaussians.compiled import (
    bin_gaussians_compiled,
    composite_compiled,
    kernel,
    project_gaussians_compiled,
    screen_extent_compiled,
)
from scene3d.gaussians.composite import composite_tiled
from scene3d.gaussians.projection import Projected, covariance_3d, project_gaussians
from scene3d.gaussians.reference import composite_dense
from scene3d.gaussians.scene import GaussianScene
from scene3d.gaussians.tiles import bin_gaussians, screen_extent

Backend = Literal["auto", "compiled", "torch", "gsplat", "dense"]


@dataclass
class RenderOutput:
    colors: Float[Tensor, "C H W D"]  # colours or features, background composited
    depth: Float[Tensor, "C H W"]  # expected camera z: sum(w z) / alpha (0 where alpha = 0)
    alpha: Float[Tensor, "C H W"]  # accumulated opacity
    means2d: Float[Tensor, "C N 2"]  # screen means; call .retain_grad() for densification statistics
    radii: Int[Tensor, "C N 2"]  # 0 where a Gaussian is culled


def resolve_backend(backend: Backend, device: torch.device, gsplat: bool = True,
                    dtype: torch.dtype = torch.float32) -> str:
    """The backend "auto" means on `device` for `dtype` (gsplat only where `gsplat` allows it); checks the others."""
    compiled_ok = device.type == "cpu" and dtype in (torch.float32, torch.float64)
    if backend == "auto":
        if device.type == "cuda" and gsplat:
            return "gsplat"
        return "compiled" if compiled_ok and kernel() is not None else "torch"
    if backend == "gsplat" and device.type != "cuda":
        raise RuntimeError("backend='gsplat' needs the scene and cameras on a CUDA device (gsplat's kernels are "
                           "CUDA-only); use backend='compiled' or 'torch' on CPU")
    if backend == "compiled" and (not compiled_ok or kernel() is None):
        raise RuntimeError("backend='compiled' needs float32/float64 CPU tensors and a built kernel "
                           "(scene3d/gaussians/compiled.py); use backend='torch'")
    if backend not in ("compiled", "torch", "gsplat", "dense"):
        raise ValueError(f"unknown rasterizer backend {backend!r}; choose auto, compiled, torch, gsplat or dense")
    return backend


def _background(background: Tensor | float | tuple | None, n_cams: int, channels: int, like: Tensor) -> Tensor:
    if background is None:
        return like.new_zeros(n_cams, channels)
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    return bg.expand(n_cams, channels) if bg.ndim <= 1 else bg


def rasterize(scene: GaussianScene, cameras: Cameras, backend: Backend = "auto",
              background: Tensor | float | tuple | None = None, sh_degree: int | None = None,
              features: Tensor | None = None, near_plane: float = 0.01, far_plane: float = 1e10,
              eps2d: float = 0.3, tile_size: int = 8, chunk: int = 32, max_chunk: int = 256) -> RenderOutput:
    """Render `scene` from every camera. `features` [N,D] or [C,N,D] overrides the scene's colours;
    `sh_degree` limits the SH degree used (progressive SH training). `tile_size`, `chunk` and `max_chunk`
    tune the tiled backends (8x8 tiles are fastest on CPU for small Gaussians); gsplat uses its own 16x16 tiles.
    Cameras must be pinhole: undistort a dataset once with `scene3d.data.undistort.undistort_dataset`."""
    if not cameras.is_pinhole:
        raise ValueError(f"Gaussians render pinhole cameras, got a {cameras.lens} lens: undistort the dataset first "
                         "(scene3d.data.undistort.undistort_dataset)")
    cameras = cameras.to(scene.means.device, scene.means.dtype)
    kind = resolve_backend(backend, scene.means.device, dtype=scene.means.dtype)
    if kind == "gsplat":
        return _rasterize_gsplat(scene, cameras, background, sh_degree, features, near_plane, far_plane, eps2d)
    colors = scene.colors(cameras.centers, sh_degree) if features is None else features
    # raw quaternions: both projections normalise them (as F.normalize), once is enough
    return rasterize_gaussians(scene.means, scene.params["quats"], scene.scales, scene.opacities, colors, cameras,
                               backend=kind, background=background, near_plane=near_plane,
                               far_plane=far_plane, eps2d=eps2d, tile_size=tile_size, chunk=chunk,
                               max_chunk=max_chunk)


def rasterize_gaussians(means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
                        opacities: Float[Tensor, " N"], colors: Float[Tensor, "N D"] | Float[Tensor, "C N D"],
                        cameras: Cameras, backend: Backend = "auto",
                        background: Tensor | float | tuple | None = None, near_plane: float = 0.01,
                        far_plane: float = 1e10, eps2d: float = 0.3, tile_size: int = 8,
                        chunk: int = 32, max_chunk: int = 256, pixel_chunk: int | None = None) -> RenderOutput:
    """The functional core of the CPU backends on raw (activated) Gaussian parameters ("auto": compiled
    on CPU when it builds, else torch; gsplat is not offered here). Quaternions (wxyz) need not be unit."""
    backend = resolve_backend(backend, means.device, gsplat=False, dtype=means.dtype)
    if backend == "gsplat":
        raise ValueError("rasterize_gaussians runs the compiled, torch or dense backend; use rasterize() for gsplat")
    n_cams, width, height = len(cameras), cameras.width, cameras.height
    proj = project(means, quats, scales, cameras.w2c, cameras.K, width, height, backend, eps2d, near_plane,
                   far_plane)
    if colors.ndim == 2:
        colors = colors[None].expand(n_cams, -1, -1)
    feats = torch.cat([colors, proj.depths[..., None]], dim=-1)  # depth rides along as a channel
    opac = opacities[None].expand(n_cams, -1)
    acc, alpha = composite(proj, opac, feats, width, height, backend, tile_size=tile_size, chunk=chunk,
                           max_chunk=max_chunk, pixel_chunk=pixel_chunk)
    bg = _background(background, n_cams, colors.shape[-1], colors)
    out_colors = acc[..., :-1] + (1.0 - alpha)[..., None] * bg[:, None, None, :]
    depth = acc[..., -1] / alpha.clamp(min=1e-10)
    return RenderOutput(out_colors, depth, alpha, proj.means2d, proj.radii)


def project(means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
            w2c: Float[Tensor, "C 4 4"], K: Float[Tensor, "C 3 3"], width: int, height: int,
            backend: Literal["compiled", "torch", "dense"], eps2d: float = 0.3, near_plane: float = 0.01,
            far_plane: float = 1e10) -> Projected:
    """Screen-space Gaussians: the fused compiled kernel for the compiled backend (unless the cameras need
    gradients), else `projection.project_gaussians`."""
    if backend == "compiled" and not (w2c.requires_grad or K.requires_grad):
        return project_gaussians_compiled(means, quats, scales, w2c, K, width, height, eps2d, near_plane, far_plane)
    return project_gaussians(means, covariance_3d(quats, scales), w2c, K, width, height, eps2d=eps2d,
                             near_plane=near_plane, far_plane=far_plane)


def composite(proj: Projected, opacities: Float[Tensor, "C N"], feats: Float[Tensor, "C N D"], width: int,
              height: int, backend: Literal["compiled", "torch", "dense"], *, tile_size: int = 8, chunk: int = 32,
              max_chunk: int = 256, pixel_chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Accumulated features [C,H,W,D] and alpha [C,H,W] (no background) of projected Gaussians."""
    if backend == "dense":
        return composite_dense(proj.means2d, proj.conics, opacities, feats, proj.depths, proj.radii.all(-1) > 0,
                               width, height, pixel_chunk)
    extent, binner = ((screen_extent_compiled, bin_gaussians_compiled) if backend == "compiled"
                      else (screen_extent, bin_gaussians))
    ext = extent(proj.radii, proj.cov2d.detach(), opacities.detach())
    bins = binner(proj.means2d.detach(), ext, proj.depths.detach(), width, height, tile_size)
    if backend == "compiled":
        return composite_compiled(proj.means2d, proj.conics, opacities, feats, bins, width, height)
    return composite_tiled(proj.means2d, proj.conics, opacities, feats, bins, width, height, chunk, max_chunk)


def _rasterize_gsplat(scene: GaussianScene, cameras: Cameras, background, sh_degree, features, near_plane,
                      far_plane, eps2d) -> RenderOutput:
    from gsplat import rasterization

    if features is not None:
        colors, degree = features, None
    elif scene.is_feature_scene:
        colors, degree = scene.params["features"], None
    else:
        colors = scene.sh_coeffs
        degree = scene.sh_degree if sh_degree is None else min(sh_degree, scene.sh_degree)
    channels = colors.shape[-1]
    bg = _background(background, len(cameras), channels, scene.means) if background is not None else None
    render, alphas, meta = rasterization(
        scene.means, scene.quats, scene.scales, scene.opacities, colors, cameras.w2c, cameras.K,
        cameras.width, cameras.height, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
        sh_degree=degree, packed=False, backgrounds=bg, render_mode="RGB+ED")
    return RenderOutput(render[..., :-1], render[..., -1], alphas[..., 0], meta["means2d"], meta["radii"])
