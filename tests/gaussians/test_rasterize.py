"""The tiled torch rasterizer against the brute-force dense reference, a literal per-pixel loop of
the CUDA kernel's logic, and finite differences."""

import pytest
import torch

from scene3d.cameras import Cameras, look_at, orbit_cameras
from scene3d.gaussians import rasterize, rasterize_gaussians
from scene3d.gaussians.composite import composite_tiled
from scene3d.gaussians.rasterize import resolve_backend
from scene3d.gaussians.sh import eval_sh
from scene3d.gaussians.tiles import bin_gaussians
from tests.gaussians.helpers import random_scene, two_cameras


def _loss(out, seed=0):
    """A generic scalar with random weights on every output, so every backward path is used."""
    g = torch.Generator().manual_seed(seed)
    wc = torch.rand(out.colors.shape, generator=g, dtype=out.colors.dtype)
    wd = torch.rand(out.depth.shape, generator=g, dtype=out.depth.dtype)
    wa = torch.rand(out.alpha.shape, generator=g, dtype=out.alpha.dtype)
    return (out.colors * wc).sum() + 0.1 * (out.depth * out.alpha.detach() * wd).sum() + (out.alpha * wa).sum()


def _grads(scene, out):
    return dict(zip(scene.params.keys(), torch.autograd.grad(_loss(out), list(scene.params.values())), strict=True))


@pytest.mark.parametrize("dtype,tol,tile_size",
                         [(torch.float64, 1e-9, 16), (torch.float64, 1e-9, 4), (torch.float32, 1e-4, 8)])
def test_tiled_equals_dense_images_and_gradients(dtype, tol, tile_size):
    scene = random_scene(400, sh_degree=2, dtype=dtype)
    cams = two_cameras(37, 29, dtype=dtype)  # not a multiple of the tile size
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=dtype)
    tiled = rasterize(scene, cams, backend="torch", background=bg, chunk=8, max_chunk=8,
                      tile_size=tile_size)
    dense = rasterize(scene, cams, backend="dense", background=bg)
    assert 0.2 < tiled.alpha.mean() < 0.99  # a non-trivial image
    torch.testing.assert_close(tiled.colors, dense.colors, atol=tol, rtol=0)
    torch.testing.assert_close(tiled.alpha, dense.alpha, atol=tol, rtol=0)
    torch.testing.assert_close(tiled.depth * tiled.alpha, dense.depth * dense.alpha, atol=10 * tol, rtol=0)
    g_tiled, g_dense = _grads(scene, tiled), _grads(scene, dense)
    for name, gd in g_dense.items():
        assert gd.abs().max() > 0, name
        scale = gd.abs().max()
        torch.testing.assert_close(g_tiled[name] / scale, gd / scale, atol=10 * tol, rtol=0, msg=name)


def test_saturation_and_skip_semantics_match_kernel_loop():
    """Many opaque layers, so pixels stop at T < 1e-4; compare with a literal per-pixel loop."""
    dtype = torch.float64
    n = 60
    g = torch.Generator().manual_seed(3)
    means2d = torch.rand(1, n, 2, generator=g, dtype=dtype) * 10 + 3
    conics = torch.stack([torch.full((n,), 0.05), torch.zeros(n), torch.full((n,), 0.05)], -1)[None].to(dtype)
    opac = (0.5 + 0.49 * torch.rand(1, n, generator=g, dtype=dtype))
    feats = torch.rand(1, n, 3, generator=g, dtype=dtype)
    depths = torch.rand(1, n, generator=g, dtype=dtype) + 1
    ext = torch.full((1, n, 2), 30.0, dtype=dtype)
    bins = bin_gaussians(means2d, ext, depths, 16, 16, tile_size=16)
    acc, alpha = composite_tiled(means2d, conics, opac, feats, bins, 16, 16, chunk=7, max_chunk=7)
    order = torch.argsort(depths[0])
    stopped = 0
    for py in range(16):
        for px in range(16):
            T, c = 1.0, torch.zeros(3, dtype=dtype)
            for i in order.tolist():
                d = means2d[0, i] - torch.tensor([px + 0.5, py + 0.5], dtype=dtype)
                a, b, cc = conics[0, i]
                power = 0.5 * (a * d[0] ** 2 + cc * d[1] ** 2) + b * d[0] * d[1]
                al = min(0.999, float(opac[0, i] * torch.exp(-power)))
                if al < 1 / 255:
                    continue
                if T * (1 - al) <= 1e-4:
                    stopped += 1
                    break
                c += feats[0, i] * al * T
                T *= 1 - al
            torch.testing.assert_close(acc[0, py, px, :], c)
            torch.testing.assert_close(alpha[0, py, px], torch.tensor(1 - T, dtype=dtype))
    assert stopped > 50  # the early stop was exercised


@pytest.mark.parametrize("chunk,max_chunk", [(1, 1), (5, 5), (64, 64), (4, 256)])
def test_chunk_length_does_not_change_result(chunk, max_chunk):
    scene, cams = random_scene(300), two_cameras()
    ref = rasterize(scene, cams, backend="torch", chunk=16, max_chunk=16)
    out = rasterize(scene, cams, backend="torch", chunk=chunk, max_chunk=max_chunk)
    torch.testing.assert_close(out.colors, ref.colors, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.alpha, ref.alpha, atol=1e-5, rtol=0)


def test_gradcheck_composite_tiny():
    dtype = torch.float64
    g = torch.Generator().manual_seed(0)
    n = 6
    means2d = (torch.rand(1, n, 2, generator=g, dtype=dtype) * 8 + 2).requires_grad_()
    l11, l22 = 0.3 + torch.rand(n, generator=g, dtype=dtype), 0.3 + torch.rand(n, generator=g, dtype=dtype)
    conics = torch.stack([l11, 0.1 * torch.randn(n, generator=g, dtype=dtype), l22], -1)[None].requires_grad_()
    opac = (0.3 + 0.6 * torch.rand(1, n, generator=g, dtype=dtype)).requires_grad_()
    feats = torch.rand(1, n, 4, generator=g, dtype=dtype).requires_grad_()
    depths = torch.rand(1, n, generator=g, dtype=dtype)
    bins = bin_gaussians(means2d.detach(), torch.full((1, n, 2), 20.0, dtype=dtype), depths, 12, 10, tile_size=4)

    def fn(m, c, o, f):
        acc, alpha = composite_tiled(m, c, o, f, bins, 12, 10, chunk=2, max_chunk=2)
        return acc, alpha

    assert torch.autograd.gradcheck(fn, (means2d, conics, opac, feats), eps=1e-6, atol=1e-6)


def test_gradcheck_rasterize_scene_tiny():
    """Finite differences through projection, SH colour and compositing for every scene parameter."""
    scene = random_scene(5, sh_degree=1, dtype=torch.float64, scale=0.4)
    cams = orbit_cameras(1, 3.0, width=10, height=8).to(torch.float64)
    names = list(scene.params.keys())

    def fn(*params):
        p = dict(zip(names, params, strict=True))
        colors = torch.clamp_min(eval_sh(1, torch.cat([p["sh0"], p["shN"]], 1), p["means"] - cams.centers) + 0.5, 0)
        out = rasterize_gaussians(p["means"], p["quats"], torch.exp(p["log_scales"]),
                                  torch.sigmoid(p["opacity_logits"]), colors, cams, background=0.3, chunk=2,
                                  max_chunk=2)
        return out.colors, out.alpha

    inputs = tuple(p.detach().clone().requires_grad_() for p in scene.params.values())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_feature_rendering_equals_per_channel():
    scene = random_scene(200, feature_dim=5)
    cams = two_cameras()
    full = rasterize(scene, cams, backend="torch")
    assert full.colors.shape == (2, 29, 37, 5)
    feats = scene.params["features"]
    for ch in range(5):
        single = rasterize(scene, cams, backend="torch", features=feats[:, ch:ch + 1])
        torch.testing.assert_close(full.colors[..., ch:ch + 1], single.colors, atol=1e-6, rtol=0)
        torch.testing.assert_close(full.depth, single.depth)


def test_gsplat_backend_without_cuda_is_a_clear_error(scene, cameras):
    with pytest.raises(RuntimeError, match="CUDA"):
        rasterize(scene, cameras, backend="gsplat")


def test_auto_backend_on_cpu_is_compiled(scene, cameras):
    assert resolve_backend("auto", torch.device("cpu")) == "compiled"
    torch.testing.assert_close(rasterize(scene, cameras).colors, rasterize(scene, cameras, backend="torch").colors)


def test_empty_view_renders_background(scene):
    c2w = look_at(torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([0.0, 1.0, 10.0]))  # looking away
    cams = Cameras.from_fov(c2w, 1.0, 20, 20)
    out = rasterize(scene, cams, background=(0.1, 0.2, 0.3))
    assert out.alpha.abs().max() == 0
    torch.testing.assert_close(out.colors[0, 3, 4], torch.tensor([0.1, 0.2, 0.3]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's kernels need CUDA")
def test_gsplat_backend_matches_torch_backend_on_cuda():
    scene, cams = random_scene(2000, sh_degree=2), two_cameras(64, 48)
    ref = rasterize(scene, cams, backend="torch", background=(0.2, 0.3, 0.4))
    out = rasterize(scene.cuda(), cams.to("cuda"), backend="gsplat", background=(0.2, 0.3, 0.4))
    torch.testing.assert_close(out.colors.cpu(), ref.colors, atol=1e-3, rtol=0)
    torch.testing.assert_close(out.alpha.cpu(), ref.alpha, atol=1e-3, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "compiled"])
@pytest.mark.parametrize("n_gaussians", [0, 50])
@pytest.mark.parametrize("size", [64, 1024])
def test_a_view_with_no_gaussian_in_it_is_background(n_gaussians, size, backend):
    """No Gaussian at all, or a camera looking away from all of them: every pixel is background."""
    from scene3d.gaussians.scene import GaussianScene

    scene = GaussianScene.random(n_gaussians, torch.tensor([[-1.0, -1, -1], [1, 1, 1]]),
                                 generator=torch.Generator().manual_seed(0))
    away = look_at(torch.tensor([[0.0, -3.0, 0.0]]), torch.tensor([0.0, -10.0, 0.0]))
    out = rasterize(scene, Cameras.from_fov(away, 0.5, size, size), backend=backend, background=(0.1, 0.2, 0.3))
    assert out.colors.shape == (1, size, size, 3) and out.alpha.eq(0).all()
    torch.testing.assert_close(out.colors[0, 7, 9], torch.tensor([0.1, 0.2, 0.3]))
