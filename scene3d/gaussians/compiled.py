"""The compiled CPU kernels, built on first use: `csrc/projection.cpp` (EWA projection, OpenMP over Gaussians)
and `csrc/composite.cpp` (screen extents, tile binning, compositing: OpenMP over tiles), bound in `csrc/module.cpp`.

`torch.utils.cpp_extension.load` compiles it with the system compiler into torch's extension cache
(`$TORCH_EXTENSIONS_DIR`, default `~/.cache/torch_extensions`) once per Python environment (the
name carries a hash of `sys.prefix`, so two clones with their own venvs never rebuild each other's
library under a running process); later processes load the cached library. If the build fails,
`kernel()` returns None after one warning line and the torch path (composite.py, the reference) is
used instead. `SCENE3D_COMPILED=0` disables the kernel.
Semantics, inputs and outputs are those of the torch references: `projection.project_gaussians`,
`composite.composite_tiled`, `tiles.screen_extent` and `tiles.bin_gaussians` (equal lists, tested).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
from jaxtyping import Float, Int
from torch import Tensor

from scene3d.gaussians.projection import Projected
from scene3d.gaussians.tiles import TileBins

SOURCES = [Path(__file__).parent / "csrc" / f"{name}.cpp" for name in ("module", "projection", "composite")]
NAME = "scene3d_composite_cpu"
STALE_LOCK_SECONDS = 900.0  # a build takes about a minute on 2 cores
_STATE: dict[str, ModuleType | None] = {}


def _build(sources: list[Path], name: str) -> ModuleType:
    from torch.utils.cpp_extension import _get_build_directory, load

    if shutil.which("ninja") is None:  # the `ninja` wheel ships the binary beside Python, maybe off PATH
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    name = f"{name}_{hashlib.sha256(sys.prefix.encode()).hexdigest()[:10]}"
    _remove_stale_lock(Path(_get_build_directory(name, verbose=False)) / "lock")
    return load(name=name, sources=[str(s) for s in sources], extra_cflags=["-O3", "-fopenmp"],
                extra_ldflags=["-fopenmp"], verbose=False)


def _remove_stale_lock(lock: Path, max_age_s: float = STALE_LOCK_SECONDS) -> None:
    """torch's build lock is a file that a build killed mid-way (Ctrl-C) leaves behind, after which every
    later build waits for it forever; one older than any build takes is removed."""
    try:
        if time.time() - lock.stat().st_mtime > max_age_s:
            lock.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def kernel() -> ModuleType | None:
    """The built extension module, or None (with a one-line warning) when it cannot be built."""
    if "module" not in _STATE:
        if os.environ.get("SCENE3D_COMPILED", "1") == "0":
            _STATE["module"] = None
        else:
            try:
                _STATE["module"] = _build(SOURCES, NAME)
            except Exception as err:  # noqa: BLE001 - any build failure means: use the torch path
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                warnings.warn(f"scene3d: compiled CPU rasterizer unavailable ({reason[:200]}); "
                              "using the torch path", RuntimeWarning, stacklevel=2)
                _STATE["module"] = None
    return _STATE["module"]


@contextmanager
def disabled() -> Iterator[None]:
    """Inside the block, `kernel()` is None, so "auto" picks the torch path (side-by-side comparisons)."""
    kernel()
    saved = _STATE["module"]
    _STATE["module"] = None
    try:
        yield
    finally:
        _STATE["module"] = saved


class CompiledProjection(torch.autograd.Function):
    """(means [N,3], quats [N,4], scales [N,3]) -> (means2d, conics, depths, radii, cov2d) as
    `projection.project_gaussians`; gradients to the Gaussians, none to the cameras."""

    @staticmethod
    def forward(ctx, means, quats, scales, w2c, K, width: int, height: int, eps2d: float, near: float, far: float):
        inputs = [x.contiguous() for x in (means, quats, scales, w2c, K)]
        out = kernel().project_forward(*inputs, width, height, eps2d, near, far)
        ctx.save_for_backward(*inputs)
        ctx.cfg = (width, height, eps2d, near, far)
        ctx.mark_non_differentiable(out[3])
        return tuple(out)

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_depths, _g_radii, g_cov2d):
        saved = ctx.saved_tensors
        means = saved[0]
        n_cams, n = saved[3].shape[0], means.shape[0]

        def dense(g, *shape):
            return means.new_zeros(n_cams, n, *shape) if g is None else g.contiguous()

        grads = kernel().project_backward(*saved, *ctx.cfg, dense(g_means2d, 2), dense(g_conics, 3), dense(g_depths),
                                          dense(g_cov2d, 3))
        return *grads, None, None, None, None, None, None, None


def project_gaussians_compiled(means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
                               w2c: Float[Tensor, "C 4 4"], K: Float[Tensor, "C 3 3"], width: int, height: int,
                               eps2d: float = 0.3, near_plane: float = 0.01, far_plane: float = 1e10) -> Projected:
    """`projection.project_gaussians(means, covariance_3d(quats, scales), ...)` in one fused kernel; the
    cameras must not need gradients."""
    if w2c.requires_grad or K.requires_grad:
        raise ValueError("the compiled projection gives no camera gradients; use projection.project_gaussians")
    means2d, conics, depths, radii, cov2d = CompiledProjection.apply(means, quats, scales, w2c.detach(), K.detach(),
                                                                     width, height, eps2d, near_plane, far_plane)
    return Projected(means2d=means2d, conics=conics, depths=depths, radii=radii, cov2d=cov2d)


class CompiledComposite(torch.autograd.Function):
    """(means2d [M,2], conics [M,3], opacities [M], feats [M,D]) over flat ids image * N + gaussian
    -> (accumulated features [C,H,W,D], alpha [C,H,W]); background is added by the caller."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, feats, bins: TileBins, width: int, height: int):
        inputs = [x.contiguous() for x in (means2d, conics, opacities, feats)]
        tiling = (bins.tile_size, bins.tiles_x, bins.tiles_y)
        lists = (bins.pair_ids.contiguous(), bins.tile_start.contiguous(), bins.tile_count.contiguous())
        acc, trans, work, splats = kernel().composite_forward(*inputs, *lists, *tiling, bins.n_images, width,
                                                              height)
        ctx.save_for_backward(inputs[3], *lists, acc, trans, work, splats)
        ctx.cfg = (*tiling, width, height)
        return acc, 1.0 - trans

    @staticmethod
    def backward(ctx, g_acc, g_alpha):
        saved = ctx.saved_tensors
        grads = kernel().composite_backward(*saved[:4], *ctx.cfg, *saved[4:], g_acc.contiguous(),
                                            g_alpha.contiguous())
        return *grads, None, None, None


def composite_compiled(means2d: Float[Tensor, "C N 2"], conics: Float[Tensor, "C N 3"],
                       opacities: Float[Tensor, "C N"], feats: Float[Tensor, "C N D"], bins: TileBins,
                       width: int, height: int) -> tuple[Tensor, Tensor]:
    """Accumulated features [C,H,W,D] and alpha [C,H,W] (no background) with the compiled kernel."""
    return CompiledComposite.apply(means2d.flatten(0, 1), conics.flatten(0, 1), opacities.flatten(0, 1),
                                   feats.flatten(0, 1), bins, width, height)


@torch.no_grad()
def screen_extent_compiled(radii: Int[Tensor, "C N 2"], cov2d: Float[Tensor, "C N 3"],
                           opacities: Float[Tensor, "C N"]) -> Float[Tensor, "C N 2"]:
    """`tiles.screen_extent` in C++ (one pass instead of fifteen tensor operations)."""
    ext = kernel().screen_extent(radii.int().reshape(-1, 2).contiguous(), cov2d.detach().reshape(-1, 3).contiguous(),
                                 opacities.detach().to(cov2d.dtype).reshape(-1).contiguous())
    return ext.reshape(radii.shape)


def bin_gaussians_compiled(means2d: Float[Tensor, "C N 2"], extent: Float[Tensor, "C N 2"],
                           depths: Float[Tensor, "C N"], width: int, height: int, tile_size: int = 16) -> TileBins:
    """`tiles.bin_gaussians` in C++ (a radix sort by depth, then a counting sort into tiles): the same TileBins."""
    n_img, n = depths.shape
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    ids, start, count = kernel().bin_tiles(means2d.reshape(-1, 2).contiguous(),
                                           extent.to(means2d.dtype).reshape(-1, 2).contiguous(),
                                           depths.to(means2d.dtype).reshape(-1).contiguous(), n, tile_size, tiles_x,
                                           tiles_y, n_img)
    return TileBins(tile_size, tiles_x, tiles_y, n_img, ids, start, count)
