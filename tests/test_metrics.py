import math

import pytest
import torch
from skimage.metrics import structural_similarity

from scene3d.metrics import depth_metrics, normal_metrics, psnr, ssim


def test_psnr_known_values():
    a = torch.zeros(2, 8, 8, 3)
    assert math.isclose(float(psnr(a + 0.1, a)), 20.0, rel_tol=1e-5)
    assert math.isclose(float(psnr(a + 0.01, a)), 40.0, rel_tol=1e-5)
    assert math.isclose(float(psnr(a + 0.2, a, data_range=2.0)), 20.0, rel_tol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_matches_scikit_image(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(40, 48, 3, generator=g)
    y = (x + 0.15 * torch.randn(40, 48, 3, generator=g)).clamp(0, 1)
    ref = structural_similarity(x.numpy(), y.numpy(), channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                sigma=1.5, use_sample_covariance=False)
    assert math.isclose(float(ssim(x, y)), ref, abs_tol=1e-5)


def test_ssim_identity_and_constant_images():
    x = torch.rand(1, 16, 16, 3)
    assert math.isclose(float(ssim(x, x)), 1.0, abs_tol=1e-6)
    a, b = torch.full((16, 16, 3), 0.2), torch.full((16, 16, 3), 0.6)
    c1 = 0.01**2  # constant images: only the luminance term remains
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert math.isclose(float(ssim(a, b)), expected, rel_tol=1e-4)


def test_depth_metrics_planted():
    target = torch.tensor([1.0, 2.0, 4.0, 0.0])
    m = depth_metrics(target * 1.1, target)
    assert math.isclose(m["abs_rel"], 0.1, rel_tol=1e-6)
    assert m["delta_1"] == 1.0
    m = depth_metrics(torch.tensor([2.0, 2.0, 4.0, 9.0]), target)  # 0 in target is ignored
    assert math.isclose(m["rmse"], math.sqrt(1 / 3), rel_tol=1e-6)
    assert math.isclose(m["delta_1"], 2 / 3, rel_tol=1e-6)


def test_normal_metrics_planted():
    target = torch.tensor([[0.0, 0.0, 1.0]] * 4)
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 20.0, 40.0]))
    pred = torch.stack([torch.sin(angles), torch.zeros(4), torch.cos(angles)], -1) * 3.0  # unnormalised
    m = normal_metrics(pred, target)
    assert math.isclose(m["mean_deg"], 17.5, rel_tol=1e-5)
    assert (m["within_11.25"], m["within_22.5"], m["within_30.0"]) == (0.5, 0.75, 0.75)
