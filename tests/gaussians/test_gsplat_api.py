"""`scene3d.gaussians.rasterization` (gsplat's signature) against a reference assembled from gsplat's own
pure-torch functions (projection, covariances, SH) and our dense compositing: outputs and gradients."""

import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

from scene3d.gaussians import rasterization
from scene3d.gaussians.reference import composite_dense
from tests.gaussians.helpers import random_scene, two_cameras

W, H = 37, 29


def _inputs(sh: bool, per_camera: bool = False, channels: int = 3):
    scene = random_scene(300, sh_degree=2, dtype=torch.float64)
    cams = two_cameras(W, H, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    if sh:
        colors = torch.cat([scene.params["sh0"], scene.params["shN"]], 1).detach()
    else:
        colors = torch.rand(300, channels, generator=g, dtype=torch.float64)
    if per_camera:
        colors = torch.stack([colors, colors.flip(0)])
    leaves = [x.detach().clone().requires_grad_() for x in (scene.means, scene.quats, scene.scales,
                                                           scene.opacities, colors)]
    bg = torch.rand(2, colors.shape[-1] if not sh else 3, generator=g, dtype=torch.float64)
    return leaves, cams.w2c, cams.K, bg


def _reference(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, backgrounds, render_mode,
               rasterize_mode, eps2d=0.3):
    """gsplat.rendering.rasterization's steps with gsplat's torch functions; dense compositing."""
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, comp = _fully_fused_projection(
        means, covars, viewmats, Ks, W, H, eps2d=eps2d, calc_compensations=rasterize_mode == "antialiased")
    opac = opacities[None].expand(2, -1) * (1 if comp is None else comp)
    if sh_degree is None:
        feats = colors if colors.ndim == 3 else colors[None].expand(2, -1, -1)
    else:
        campos = torch.inverse(viewmats)[:, :3, 3]
        shs = colors[None].expand(2, -1, -1, -1)
        feats = torch.clamp_min(_spherical_harmonics(sh_degree, means[None] - campos[:, None], shs) + 0.5, 0)
    bg = backgrounds
    if render_mode in ("D", "ED"):
        feats, bg = depths[..., None], torch.zeros(2, 1, dtype=torch.float64)
    elif render_mode != "RGB":
        feats = torch.cat([feats, depths[..., None]], -1)
        bg = torch.cat([bg, torch.zeros(2, 1, dtype=torch.float64)], -1)
    acc, alpha = composite_dense(means2d, conics, opac, feats, depths, radii.all(-1) > 0, W, H)
    render = acc + (1 - alpha)[..., None] * bg[:, None, None]
    if render_mode.endswith("ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha[..., None].clamp(min=1e-10)], -1)
    return render, alpha[..., None], radii


@pytest.mark.parametrize("render_mode,sh,rasterize_mode", [
    ("RGB", True, "classic"), ("RGB+ED", True, "antialiased"), ("RGB+D", False, "classic"), ("D", False, "classic"),
    ("ED", True, "antialiased")])
def test_rasterization_matches_gsplat_reference(render_mode, sh, rasterize_mode):
    leaves, viewmats, Ks, bg = _inputs(sh)
    sh_degree = 2 if sh else None
    render, alphas, meta = rasterization(*leaves, viewmats, Ks, W, H, sh_degree=sh_degree, backgrounds=bg,
                                         render_mode=render_mode, rasterize_mode=rasterize_mode, tile_size=8)
    ref_leaves = [x.detach().clone().requires_grad_() for x in leaves]
    ref, ref_alphas, radii = _reference(*ref_leaves, viewmats, Ks, sh_degree, bg, render_mode, rasterize_mode)
    channels = {"RGB": 3, "D": 1, "ED": 1, "RGB+D": 4, "RGB+ED": 4}[render_mode]
    assert render.shape == (2, H, W, channels) and alphas.shape == (2, H, W, 1)
    assert torch.equal(meta["radii"], radii) and meta["means2d"].shape == (2, 300, 2)
    assert 0.2 < alphas.mean() < 0.99
    mask = ref_alphas > 1e-3  # expected depth is ill-conditioned where nothing was composited
    torch.testing.assert_close(render * mask, ref * mask, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(alphas, ref_alphas, atol=1e-9, rtol=0)
    g = torch.Generator().manual_seed(0)
    w = torch.rand(render.shape, generator=g, dtype=torch.float64) * mask
    wa = torch.rand(alphas.shape, generator=g, dtype=torch.float64)
    ((render * w).sum() + (alphas * wa).sum()).backward()
    ((ref * w).sum() + (ref_alphas * wa).sum()).backward()
    for name, mine, theirs in zip(("means", "quats", "scales", "opacities", "colors"), leaves, ref_leaves,
                                  strict=True):
        if theirs.grad is None:  # depth-only modes never read the colours
            assert mine.grad is None or mine.grad.abs().max() == 0, name
            continue
        assert theirs.grad.abs().max() > 0, name
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-8 * float(theirs.grad.abs().max()), rtol=0,
                                   msg=name)


def test_per_camera_features_and_densification_statistics():
    leaves, viewmats, Ks, bg = _inputs(sh=False, per_camera=True, channels=64)
    render, _, meta = rasterization(*leaves, viewmats, Ks, W, H, backgrounds=bg)
    meta["means2d"].retain_grad()
    render.square().sum().backward()
    ref_leaves = [x.detach().clone().requires_grad_() for x in leaves]
    ref, _, _ = _reference(*ref_leaves, viewmats, Ks, None, bg, "RGB", "classic")
    assert render.shape == (2, H, W, 64)
    torch.testing.assert_close(render, ref, atol=1e-9, rtol=0)
    assert meta["means2d"].grad.abs().sum() > 0 and leaves[4].grad.shape == (2, 300, 64)


@pytest.mark.parametrize("kwargs,match", [({"packed": True}, "packed"), ({"absgrad": True}, "absgrad"),
                                          ({"camera_model": "fisheye"}, "camera_model"),
                                          ({"render_mode": "N"}, "render_mode")])
def test_unsupported_options_are_clear_errors(kwargs, match):
    leaves, viewmats, Ks, _ = _inputs(sh=False)
    with pytest.raises(ValueError, match=match):
        rasterization(*leaves, viewmats, Ks, W, H, **kwargs)
    with pytest.raises(TypeError, match="unexpected keyword"):
        rasterization(*leaves, viewmats, Ks, W, H, not_an_option=1)
