"""Projection and SH colour against gsplat's pure-torch reference implementation (runs on CPU)."""

import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _spherical_harmonics

from scene3d.gaussians.projection import covariance_3d, project_gaussians
from scene3d.gaussians.sh import eval_sh
from tests.gaussians.helpers import random_scene, two_cameras


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_matches_gsplat(seed):
    scene = random_scene(500, seed=seed, dtype=torch.float64)
    # push some Gaussians behind / beside the cameras so culling is exercised
    scene.params["means"].data *= 3.0
    cams = two_cameras(61, 47, dtype=torch.float64)
    covars = covariance_3d(scene.quats, scene.scales)
    ours = project_gaussians(scene.means, covars, cams.w2c, cams.K, cams.width, cams.height)
    radii, means2d, depths, conics, _ = _fully_fused_projection(scene.means, covars, cams.w2c, cams.K,
                                                                 cams.width, cams.height)
    assert (radii > 0).any() and (radii == 0).any()
    assert torch.equal(ours.radii, radii)
    vis = radii.all(-1) > 0
    torch.testing.assert_close(ours.means2d[vis], means2d[vis])
    torch.testing.assert_close(ours.conics[vis], conics[vis])
    torch.testing.assert_close(ours.depths, depths)


def test_projection_gradients_finite_for_culled():
    scene = random_scene(50, dtype=torch.float64)
    scene.params["means"].data[:10, 0] = 3.0  # on top of / behind camera 0
    cams = two_cameras(dtype=torch.float64)
    p = project_gaussians(scene.means, covariance_3d(scene.quats, scene.scales), cams.w2c, cams.K, 37, 29)
    (p.means2d.sum() + p.conics.sum()).backward()
    assert torch.isfinite(scene.params["means"].grad).all()


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat(degree):
    g = torch.Generator().manual_seed(degree)
    coeffs = torch.randn(200, 16, 3, generator=g, dtype=torch.float64)
    dirs = torch.randn(200, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(eval_sh(degree, coeffs, dirs), _spherical_harmonics(degree, dirs, coeffs))
