"""Volume rendering: quadrature, depth conventions, backgrounds, N-d features, occupancy skipping."""

from __future__ import annotations

import math

import pytest
import torch

from scene3d.cameras import Cameras, look_at
from scene3d.fields.base import trunc_exp
from scene3d.rays import Rays
from scene3d.render import (
    OccupancyGrid,
    OccupancyGridConfig,
    compute_weights,
    render_image,
    render_occupancy,
    render_rays,
)
from tests._field_scenes import BlobField, blob_views


def test_constant_density_matches_beer_lambert():
    sigma, length, n = 2.0, 1.3, 200
    deltas = torch.full((1, n), length / n)
    weights, transmittance = compute_weights(torch.full((1, n), sigma), deltas)
    assert math.isclose(weights.sum().item(), 1 - math.exp(-sigma * length), rel_tol=1e-5)
    assert transmittance[0, 0] == 1
    assert math.isclose(transmittance[0, -1].item(), math.exp(-sigma * length * (n - 1) / n), rel_tol=1e-5)


def test_weights_of_an_opaque_sample_stop_the_ray():
    sigmas = torch.tensor([[0.0, 0.0, 1e4, 5.0, 5.0]])
    weights, _ = compute_weights(sigmas, torch.full_like(sigmas, 0.1))
    torch.testing.assert_close(weights, torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]]))


def test_an_overflowing_density_stops_the_ray_without_nans():
    """exp of a pre-activation above ~88 is inf in fp32; the ray must end there, gradients stay finite."""
    preact = torch.tensor([[0.5, 100.0, 2.0, 1.0]], requires_grad=True)
    weights, transmittance = compute_weights(trunc_exp(preact), torch.full((1, 4), 0.1))
    torch.testing.assert_close(weights.detach(), torch.tensor([[1 - math.exp(-0.1 * math.exp(0.5)),
                                                                math.exp(-0.1 * math.exp(0.5)), 0.0, 0.0]]))
    assert transmittance[0, 2:].eq(0).all()
    (weights * torch.arange(4.0)).sum().backward()
    assert torch.isfinite(preact.grad).all()


class SlabField(BlobField):
    """An opaque slab z in [-1, -0.9] with colour (0.2, 0.5, 0.8) (or N-d ramps)."""

    def embed(self, x):
        return ((x[..., 2] < -0.9).float())[..., None]

    def decode_density(self, features):
        return torch.log(features[..., 0] * 1e3 + 1e-8)

    def decode(self, features, dirs):
        rgb = torch.linspace(0.2, 0.8, self.config.color_dim).expand(*features.shape[:-1], -1)
        return self.decode_density(features), rgb


def overhead_camera(width: int = 9, height: int = 7) -> Cameras:
    c2w = look_at(torch.tensor([[0.1, -0.1, 1.0]]), torch.tensor([0.0, 0.0, -1.0]))
    return Cameras.from_fov(c2w, math.radians(40), width, height)


def test_depth_is_camera_z_and_t_depth_is_ray_distance():
    field, cam = SlabField(), overhead_camera()
    out = render_image(field, cam, 512, background=torch.zeros(3))
    rays = cam.rays()
    assert (out["accumulation"] > 0.99).all()
    # Every ray stops at the slab's top z = -0.9; camera z of that point depends on the pixel.
    points = rays.at(out["t_depth"][..., None])[..., 0, :]
    torch.testing.assert_close(points[..., 2], torch.full_like(points[..., 2], -0.9), atol=0.02, rtol=0)
    _, z = cam.project(points.reshape(1, -1, 3))
    torch.testing.assert_close(out["depth"].flatten(), z.flatten(), atol=1e-4, rtol=1e-4)
    assert (out["t_depth"] > out["depth"] + 1e-3).any()
    torch.testing.assert_close(out["rgb"][0, 0, 0], torch.tensor([0.2, 0.5, 0.8]), atol=1e-3, rtol=0)


def test_background_fixed_random_and_nd_features():
    field = SlabField(color_dim=8)
    rays = Rays(torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [5.0, 0.0, 0.0]]),
                torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), torch.zeros(3),
                torch.full((3,), 1e10))
    bg = torch.arange(8.0)
    out = render_rays(field, rays, 64, background=bg)
    assert out["rgb"].shape == (3, 8)
    torch.testing.assert_close(out["rgb"][0], torch.linspace(0.2, 0.8, 8), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["rgb"][1:], bg.expand(2, 8))  # away from the slab / misses the box
    random = render_rays(field, rays, 64, background="random", generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(random["background"][1], random["background"][2])
    torch.testing.assert_close(random["rgb"][1:], random["background"][1:])
    with pytest.raises(ValueError, match="background"):
        render_rays(field, rays, 8, background="white")


class CountingField(BlobField):
    """The blob scene, counting the points it is asked about."""

    def __init__(self):
        super().__init__()
        self.queried = 0

    def query(self, x, dirs):
        self.queried += x[..., 0].numel()
        return super().query(x, dirs)


def test_occupancy_skipping_renders_the_reference_image_with_fewer_queries():
    field = CountingField()
    grid = OccupancyGrid(field.aabb, OccupancyGridConfig(resolution=32, warmup_steps=0))
    for step in range(4):
        grid.update(field.density, step, torch.Generator().manual_seed(step))
    assert 0.02 < grid.occupied_fraction < 0.3
    cams = blob_views(2, size=20).cameras
    ref = render_image(field, cams, 96, background=torch.ones(3))
    ref_queries, field.queried = field.queried, 0
    fast = render_image(field, cams, 96, background=torch.ones(3), occupancy=grid)
    assert field.queried < ref_queries / 4
    for key in ("rgb", "accumulation", "depth"):  # skipped cells hold optical thickness < 0.01 per step
        torch.testing.assert_close(fast[key], ref[key], atol=1e-3, rtol=0)
    mse = (fast["rgb"] - ref["rgb"]).square().mean().clamp_min(1e-12)
    assert -10 * torch.log10(mse) > 60


def test_rays_stop_once_nearly_opaque():
    field = CountingField()
    everywhere = OccupancyGrid(field.aabb)  # never updated: every cell occupied, only early termination acts
    cams = blob_views(2, size=20).cameras
    ref = render_image(field, cams, 96, background=torch.ones(3))
    ref_queries, field.queried = field.queried, 0
    stopped = render_image(field, cams, 96, background=torch.ones(3), occupancy=everywhere, min_transmittance=1e-4)
    assert field.queried < 0.95 * ref_queries  # the blobs cover a quarter of the pixels
    for key in ("rgb", "accumulation"):  # what lies behind a stop weighs less than the transmittance left
        torch.testing.assert_close(stopped[key], ref[key], atol=1e-4, rtol=0)


def test_occupancy_grid_forgets_density_that_went_away():
    field = BlobField()
    grid = OccupancyGrid(field.aabb, OccupancyGridConfig(resolution=16, warmup_steps=1, decay=0.5))
    grid.update(field.density, 0)
    assert grid.occupied_fraction == 1.0  # nothing is skipped during the warm-up
    for step in range(1, 30):
        grid.update(field.density, step, torch.Generator().manual_seed(step))
    assert grid.occupied_fraction < 0.4
    inside = torch.tensor([[-0.35, 0.0, 0.0], [0.4, 0.1, 0.05]])
    assert grid.occupied(inside).all()
    assert not grid.occupied(torch.tensor([[0.9, 0.9, 0.9], [3.0, 0.0, 0.0]])).any()


def test_measure_takes_the_maximum_over_points_in_each_cell_and_forgets_the_past():
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), OccupancyGridConfig(resolution=4, dilate=False))
    grid.density.fill_(100.0)
    cell_of = lambda x: ((x + 1) / 2 * 4).long().clamp(0, 3)  # noqa: E731
    per_cell = lambda x: (cell_of(x) * torch.tensor([1, 4, 16])).sum(-1).float()  # noqa: E731 (the flat index)
    grid.measure(lambda x: per_cell(x) * (x[:, 0] > 0.75 - 1e-9).float() + 0.5 * (x[:, 0] > 0.99), 8)
    expected = torch.zeros(64)
    x_last = torch.arange(64) % 4 == 3
    expected[x_last] = torch.arange(64)[x_last].float()  # max over 8 points: >= the constant, < constant + 0.5 w.p. ~1
    assert torch.all(grid.density[~x_last] == 0)
    assert torch.all((grid.density[x_last] >= expected[x_last]) & (grid.density[x_last] <= expected[x_last] + 0.5))
    assert grid.bitfield[..., 3].flatten()[1:].all() and not grid.bitfield[..., :3].any()


def test_render_grid_of_a_converged_field_skips_more_at_the_same_image():
    field = CountingField()
    training = OccupancyGrid(field.aabb, OccupancyGridConfig(resolution=32, warmup_steps=0))
    for step in range(4):
        training.update(field.density, step, torch.Generator().manual_seed(step))
    fine = render_occupancy(field.density, field.aabb, render_samples=96, generator=torch.Generator().manual_seed(0))
    assert fine.config.resolution == 64 and not fine.config.dilate
    assert fine.occupied_fraction < 0.6 * training.occupied_fraction
    cams = blob_views(2, size=20).cameras
    ref = render_image(field, cams, 96, background=torch.ones(3))
    field.queried = 0
    render_image(field, cams, 96, background=torch.ones(3), occupancy=training)
    training_queries, field.queried = field.queried, 0
    fast = render_image(field, cams, 96, background=torch.ones(3), occupancy=fine)
    assert field.queried < 0.75 * training_queries
    # no dilation margin: grazing rays through these blobs' soft shells (a sigmoid over 1/60 of the
    # box) lose a little at silhouette pixels (measured: 0.7% of colours, 2.5% of opacities, by up to
    # 0.03-0.04; 51 dB apart)
    for key in ("rgb", "accumulation"):
        assert ((fast[key] - ref[key]).abs() > 0.01).float().mean() < 0.05  # silhouette pixels only
        torch.testing.assert_close(fast[key], ref[key], atol=0.06, rtol=0)
    mse = (fast["rgb"] - ref["rgb"]).square().mean()
    assert -10 * torch.log10(mse) > 45, -10 * torch.log10(mse)


def test_rendering_is_differentiable_through_the_occupancy_path():
    field = BlobField()
    grid = OccupancyGrid(field.aabb, OccupancyGridConfig(resolution=16, warmup_steps=0))
    grid.update(field.density, 0)
    rays = blob_views(1, size=8).cameras.rays().flatten()
    out = render_rays(field, rays, 32, occupancy=grid, background=torch.ones(3))
    out["rgb"].sum().backward()
    assert field.anchor.grad is not None and field.anchor.grad.abs() > 0
