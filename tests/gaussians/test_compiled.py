"""The compiled CPU kernels (scene3d/gaussians/compiled.py): projection against the torch projection,
compositing against the dense reference (images and gradients, early stop, Gaussians straddling tiles, empty
inputs), determinism, fallback."""

import pytest
import torch

from scene3d.gaussians import compiled, rasterize
from scene3d.gaussians.compiled import composite_compiled, project_gaussians_compiled
from scene3d.gaussians.projection import covariance_3d, project_gaussians
from scene3d.gaussians.rasterize import resolve_backend
from scene3d.gaussians.reference import composite_dense
from scene3d.gaussians.tiles import bin_gaussians, screen_extent
from tests.gaussians.helpers import random_scene, two_cameras
from tests.gaussians.test_rasterize import _grads


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("dtype,feature_dim,tile_size", [(torch.float64, None, 8), (torch.float32, None, 16),
                                                         (torch.float32, 64, 8), (torch.float32, 3, 4)])
def test_compiled_equals_dense_images_and_gradients(dtype, feature_dim, tile_size):
    scene = random_scene(400, sh_degree=2, feature_dim=feature_dim, dtype=dtype)
    cams = two_cameras(37, 29, dtype=dtype)  # not a multiple of the tile size
    ours = rasterize(scene, cams, backend="compiled", background=0.4, tile_size=tile_size)
    ref = rasterize(scene, cams, backend="dense", background=0.4)
    assert 0.2 < ref.alpha.mean() < 0.99
    torch.testing.assert_close(ours.colors, ref.colors, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.alpha, ref.alpha, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.depth * ours.alpha, ref.depth * ref.alpha, atol=1e-5, rtol=0)
    g_ours, g_ref = _grads(scene, ours), _grads(scene, ref)
    for name, gr in g_ref.items():
        assert gr.abs().max() > 0, name
        assert _max_rel(g_ours[name], gr) < 1e-5, name


def _projection_inputs(n: int, seed: int = 0):
    """Gaussians in and around two cameras' view: some behind the camera or past the near plane, some far
    outside the field of view (the clamped Jacobian), some with tiny or unnormalised quaternions."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * torch.tensor([4.0, 4.0, 2.0],
                                                                                          dtype=torch.float64)
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64) * torch.rand(n, 1, generator=g, dtype=torch.float64)
    scales = torch.exp(torch.randn(n, 3, generator=g, dtype=torch.float64) - 2.5)
    return means, quats, scales, two_cameras(40, 30, dtype=torch.float64)


def test_compiled_projection_equals_the_torch_projection_outputs_and_gradients():
    means, quats, scales, cams = _projection_inputs(600)
    leaves = [x.clone().requires_grad_() for x in (means, quats, scales)]
    ours = project_gaussians_compiled(*leaves, cams.w2c, cams.K, 40, 30, near_plane=0.5)
    ref_leaves = [x.clone().requires_grad_() for x in (means, quats, scales)]
    ref = project_gaussians(ref_leaves[0], covariance_3d(*ref_leaves[1:]), cams.w2c, cams.K, 40, 30, near_plane=0.5)
    culled = (ref.radii == 0).all(-1)
    clamped = (ref.means2d[..., 0] < -40) | (ref.means2d[..., 0] > 80)
    assert 0.1 < culled.float().mean() < 0.9 and clamped.sum() > 20 and (ref.depths < 0.5).sum() > 20
    assert torch.equal(ours.radii, ref.radii) and ours.radii.dtype == torch.int32
    g = torch.Generator().manual_seed(1)
    loss, ref_loss = 0, 0
    for name in ("means2d", "conics", "depths", "cov2d"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=1e-10, atol=1e-12)
        w = torch.randn(getattr(ref, name).shape, generator=g, dtype=torch.float64)
        loss, ref_loss = loss + (getattr(ours, name) * w).sum(), ref_loss + (getattr(ref, name) * w).sum()
    loss.backward()
    ref_loss.backward()
    for mine, theirs, name in zip(leaves, ref_leaves, ("means", "quats", "scales"), strict=True):
        assert theirs.grad.abs().max() > 0, name
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-9, atol=1e-9 * float(theirs.grad.abs().max()))


def test_gradcheck_compiled_projection():
    means, quats, scales, cams = _projection_inputs(12, seed=2)
    means = means * 0.3  # in view
    inputs = tuple(x.clone().requires_grad_() for x in (means, quats, scales))

    def projected(*x):
        p = project_gaussians_compiled(*x, cams.w2c, cams.K, 40, 30)
        return p.means2d, p.conics, p.depths, p.cov2d

    assert torch.autograd.gradcheck(projected, inputs, eps=1e-7, atol=1e-5)


def test_cameras_that_need_gradients_are_projected_by_the_torch_path():
    scene, cams = random_scene(200, dtype=torch.float64), two_cameras(dtype=torch.float64)
    c2w = cams.c2w.clone().requires_grad_()
    posed = type(cams)(c2w, cams.K, cams.width, cams.height)
    rasterize(scene, posed, backend="compiled").colors.sum().backward()
    assert c2w.grad is not None and c2w.grad.abs().max() > 0
    with pytest.raises(ValueError, match="no camera gradients"):
        project_gaussians_compiled(scene.means, scene.quats, scene.scales, posed.w2c, cams.K, 37, 29)


def _screen_scene(n: int, size: float, seed: int, dtype=torch.float64):
    """Screen-space Gaussians over a 24x20 image: round, `size` pixels wide, mostly opaque."""
    g = torch.Generator().manual_seed(seed)
    means2d = torch.rand(1, n, 2, generator=g, dtype=dtype) * torch.tensor([24.0, 20.0], dtype=dtype)
    inv = 1 / size**2 * (0.5 + torch.rand(n, generator=g, dtype=dtype))
    conics = torch.stack([inv, 0.2 * inv * torch.randn(n, generator=g, dtype=dtype).clamp(-1, 1), inv], -1)[None]
    opac = 0.3 + 0.69 * torch.rand(1, n, generator=g, dtype=dtype)
    feats = torch.randn(1, n, 5, generator=g, dtype=dtype)
    depths = torch.rand(1, n, generator=g, dtype=dtype)
    return means2d, conics, opac, feats, depths


@pytest.mark.parametrize("n,size,tile_size,dtype", [(80, 3.0, 4, torch.float64), (40, 12.0, 4, torch.float64),
                                                    (200, 1.5, 16, torch.float64), (80, 3.0, 8, torch.float32),
                                                    (200, 1.5, 16, torch.float32), (40, 12.0, 4, torch.float32)])
def test_composite_matches_dense_with_early_stop_and_straddling(n, size, tile_size, dtype):
    """Opaque layers (pixels stop at T < 1e-4) and Gaussians wider than a tile (straddling many tiles); float64
    runs the scalar kernels (to 1e-10), float32 the SIMD ones (8-pixel rows, tiles of 4 and 16 wide)."""
    means2d, conics, opac, feats, depths = _screen_scene(n, size, seed=n, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    ext = torch.full((1, n, 2), 6 * size, dtype=dtype)
    bins = bin_gaussians(means2d, ext, depths, 24, 20, tile_size=tile_size)
    assert (bins.tile_count > 0).all()
    leaves = [x.clone().requires_grad_() for x in (means2d, conics, opac, feats)]
    acc, alpha = composite_compiled(*leaves, bins, 24, 20)
    ref_leaves = [x.clone().requires_grad_() for x in (means2d, conics, opac, feats)]
    ref_acc, ref_alpha = composite_dense(*ref_leaves, depths, torch.ones(1, n, dtype=torch.bool), 24, 20)
    torch.testing.assert_close(acc, ref_acc, atol=tol, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=tol, rtol=0)
    g = torch.Generator().manual_seed(1)
    w_acc, w_alpha = torch.randn(acc.shape, generator=g, dtype=acc.dtype), torch.rand(alpha.shape, generator=g,
                                                                                       dtype=acc.dtype)
    ((acc * w_acc).sum() + (alpha * w_alpha).sum()).backward()
    ((ref_acc * w_acc).sum() + (ref_alpha * w_alpha).sum()).backward()
    for mine, ref in zip(leaves, ref_leaves, strict=True):
        atol = 1e-9 if dtype == torch.float64 else 2e-5 * float(ref.grad.abs().max())
        torch.testing.assert_close(mine.grad, ref.grad, atol=atol, rtol=0)
    if size == 3.0:
        assert (alpha > 1 - 2e-4).sum() > 20  # the early stop was exercised


def test_gradcheck_compiled_composite_tiny():
    means2d, conics, opac, feats, depths = _screen_scene(6, 2.5, seed=3)
    bins = bin_gaussians(means2d, torch.full((1, 6, 2), 20.0, dtype=torch.float64), depths, 24, 20, tile_size=8)
    inputs = tuple(x.clone().requires_grad_() for x in (means2d, conics, opac, feats))
    assert torch.autograd.gradcheck(lambda *x: composite_compiled(*x, bins, 24, 20), inputs, eps=1e-6, atol=1e-6)


def test_densification_statistics_and_determinism():
    """means2d gradients reach the retained screen means as with the dense reference; two backward passes are
    bitwise equal (exact resume relies on it)."""
    scene, cams = random_scene(300), two_cameras()
    grads = []
    for backend in ("compiled", "compiled", "dense"):
        out = rasterize(scene, cams, backend=backend, background=0.2)
        out.means2d.retain_grad()
        (out.colors.square().sum() + out.alpha.sum()).backward()
        grads.append(out.means2d.grad)
    assert torch.equal(grads[0], grads[1])
    assert grads[2].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[2], atol=1e-5 * float(grads[2].abs().max()), rtol=0)


def test_no_gaussians_gives_zero_image_and_empty_gradients():
    means2d, conics, opac, feats, depths = (x[:, :0] for x in _screen_scene(4, 2.0, seed=0))
    bins = bin_gaussians(means2d, torch.zeros(1, 0, 2, dtype=torch.float64), depths, 24, 20, tile_size=8)
    leaves = [x.clone().requires_grad_() for x in (means2d, conics, opac, feats)]
    acc, alpha = composite_compiled(*leaves, bins, 24, 20)
    assert acc.shape == (1, 20, 24, 5) and acc.eq(0).all() and alpha.eq(0).all()
    (acc.sum() + alpha.sum()).backward()
    assert leaves[0].grad.shape == (1, 0, 2)


def test_build_failure_falls_back_to_torch_with_a_notice(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cpp"
    broken.write_text("#error this kernel does not build\n")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setattr(compiled, "SOURCES", [broken])
    monkeypatch.setattr(compiled, "NAME", "scene3d_broken_kernel")
    monkeypatch.setattr(compiled, "_STATE", {})
    with pytest.warns(RuntimeWarning, match="compiled CPU rasterizer unavailable"):
        assert compiled.kernel() is None
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    scene, cams = random_scene(50), two_cameras()
    torch.testing.assert_close(rasterize(scene, cams).colors, rasterize(scene, cams, backend="torch").colors)
    with pytest.raises(RuntimeError, match="backend='torch'"):
        rasterize(scene, cams, backend="compiled")


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("SCENE3D_COMPILED", "0")
    monkeypatch.setattr(compiled, "_STATE", {})
    assert compiled.kernel() is None
    assert resolve_backend("auto", torch.device("cpu")) == "torch"


@pytest.mark.parametrize("tile_size,dtype", [(4, torch.float32), (16, torch.float32), (8, torch.float64)])
def test_compiled_binning_equals_torch_binning(tile_size, dtype):
    """Two images, Gaussians on and off screen, zero extents (culled), equal depths (stable order), negative
    depths and both zeros (the radix sort's keys)."""
    g = torch.Generator().manual_seed(tile_size)
    means2d = (torch.rand(2, 500, 2, generator=g) * 80 - 10).to(dtype)
    extent = (torch.rand(2, 500, 2, generator=g) * 12).to(dtype)
    extent[:, ::7] = 0
    depths = (torch.rand(2, 500, generator=g) * 4 - 1).round(decimals=1).to(dtype)
    depths[:, ::11] = -0.0
    depths[:, 5::13] = 1e30
    ref = bin_gaussians(means2d, extent, depths, 61, 47, tile_size)
    ours = compiled.bin_gaussians_compiled(means2d, extent, depths, 61, 47, tile_size)
    assert len(ref.pair_ids) > 1000
    for name in ("pair_ids", "tile_start", "tile_count"):
        assert torch.equal(getattr(ours, name), getattr(ref, name)), name
    assert (ours.tile_size, ours.tiles_x, ours.tiles_y, ours.n_images) == (tile_size, ref.tiles_x, ref.tiles_y, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_screen_extent_equals_torch(dtype):
    """Faint (never 1/255), culled (radius 0), radius-bound and ellipse-bound Gaussians."""
    g = torch.Generator().manual_seed(0)
    n = 4000
    cov = torch.rand(2, n, 3, generator=g, dtype=dtype) * 20 + 0.3
    opac = torch.rand(2, n, generator=g, dtype=dtype)
    opac[:, :100] = 0.5 / 255  # never visible
    radii = (torch.rand(2, n, 2, generator=g) * 12).int()
    radii[:, 100:200] = 0  # culled
    ours = compiled.screen_extent_compiled(radii, cov, opac)
    ref = screen_extent(radii, cov, opac)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    assert ours[:, :200].eq(0).all() and (ours[:, 200:] > 0).float().mean() > 0.9
    assert (ours < radii).any() and (ours == radii).any()  # both bounds bind somewhere


def test_disabled_block_selects_torch_then_restores():
    with compiled.disabled():
        assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cpu")) == "compiled"


def test_auto_keeps_other_dtypes_on_the_torch_path():
    assert resolve_backend("auto", torch.device("cpu"), dtype=torch.bfloat16) == "torch"
    with pytest.raises(RuntimeError, match="float32/float64"):
        resolve_backend("compiled", torch.device("cpu"), dtype=torch.float16)


def test_a_build_lock_left_by_a_killed_build_is_removed_only_when_stale(tmp_path):
    """A build killed mid-way leaves torch's lock file; later builds would wait for it forever."""
    import os
    import time

    lock = tmp_path / "lock"
    lock.touch()
    compiled._remove_stale_lock(lock)
    assert lock.exists()  # a build may be running right now
    old = time.time() - 2 * compiled.STALE_LOCK_SECONDS
    os.utime(lock, (old, old))
    compiled._remove_stale_lock(lock)
    assert not lock.exists()
    compiled._remove_stale_lock(lock)  # no lock: nothing to do
