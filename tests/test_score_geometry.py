"""Shape checks of distilled objects: a torus has a hole, the nearest primitive family is the right
one, and a wrong shape fails, on exact renders of the synthetic worlds' objects."""

import math

import numpy as np
import pytest
import torch

from scene3d.data.synthetic import WorldConfig, make_world, render_world
from scene3d.distill.score.geometry import (
    FAMILIES,
    ShapeCheckConfig,
    fit_primitive,
    largest_solid,
    normalise,
    passes_as,
    primitive_sdf,
    primitive_surface,
    rotation_matrix,
    shape_report,
    shape_views,
    tunnels,
)


def _grid(n: int = 40) -> np.ndarray:
    axis = np.linspace(-1, 1, n)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)


def test_tunnels_count_the_torus_hole_and_cavities_are_filled():
    x = _grid()
    ring = np.sqrt(x[..., 0] ** 2 + x[..., 1] ** 2) - 0.6
    torus = ring**2 + x[..., 2] ** 2 < 0.25**2
    ball = (x**2).sum(-1) < 0.7**2
    hollow = ball & ((x**2).sum(-1) > 0.4**2)  # a ball with a cavity: no tunnel once filled
    two = ((x - [0.5, 0, 0]) ** 2).sum(-1) < 0.3**2
    two |= ((x + [0.5, 0, 0]) ** 2).sum(-1) < 0.2**2
    assert tunnels(largest_solid(torus)[0]) == 1
    assert tunnels(largest_solid(ball)[0]) == 0
    solid, components = largest_solid(hollow)
    assert components == 1 and solid.sum() == ball.sum() and tunnels(solid) == 0
    solid, components = largest_solid(two)
    assert components == 2 and tunnels(solid) == 0
    assert solid.sum() == (((x - [0.5, 0, 0]) ** 2).sum(-1) < 0.3**2).sum()  # the larger ball is kept


def test_surface_samples_lie_on_their_primitive():
    params = torch.tensor([[0.5, 0.3, 0.4]])
    u = torch.rand(500, 4, generator=torch.Generator().manual_seed(0))
    for family in FAMILIES:
        points = primitive_surface(family, params, u)
        assert primitive_sdf(family, params, points).abs().max() < 1e-5, family


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_names_the_family_of_posed_surface_points(family):
    g = torch.Generator().manual_seed(1)
    params = {"sphere": [0.5, 0, 0], "box": [0.5, 0.35, 0.25], "cylinder": [0.3, 0.5, 0], "torus": [0.5, 0.18, 0]}
    local = primitive_surface(family, torch.tensor([params[family]]), torch.rand(300, 4, generator=g))[0]
    pose = rotation_matrix(torch.tensor([[0.4, -0.7, 1.1]]))[0]
    points = normalise(local @ pose.T + torch.tensor([0.2, -0.1, 0.3]))
    chamfer = {f: fit_primitive(f, points, generator=torch.Generator().manual_seed(0))["chamfer"] for f in FAMILIES}
    assert min(chamfer, key=chamfer.get) == family, chamfer
    assert chamfer[family] < 0.12


@pytest.mark.parametrize(("name", "seed"), [("torus", 100), ("box", 8)])
def test_shape_report_passes_the_right_shape_and_fails_a_wrong_one(name, seed):
    world = make_world(seed, WorldConfig(n_objects=(1, 1), placement_extent=0.0, ground_half_size=0.0),
                       object_types=[name])
    config = ShapeCheckConfig()
    cameras = shape_views(config, world.center[0])
    out = render_world(world, cameras)
    report = shape_report(cameras, out["depth"], out["mask"].float(), config, center=world.center[0])
    assert report["components"] == 1 and report["nearest"] == name
    assert passes_as(report, name)
    for other in FAMILIES:
        if other != name:
            assert not passes_as(report, other), other
    assert report["tunnels"] == (1 if name == "torus" else 0)


def test_a_torus_without_its_hole_fails_the_torus_check():
    """A filled-in torus (its hole plugged by a disc, as a silhouette-only distillation produces):
    carved from depth, it has no tunnel, so it is not a torus even if its outline is one."""
    world = make_world(100, WorldConfig(n_objects=(1, 1), placement_extent=0.0, ground_half_size=0.0),
                       object_types=["torus"])
    config = ShapeCheckConfig()
    cameras = shape_views(config, world.center[0])
    out = render_world(world, cameras)
    plug = make_world(0, WorldConfig(n_objects=(1, 1), placement_extent=0.0, ground_half_size=0.0),
                      object_types=["cylinder"])
    big, small = world.params[0, 0], world.params[0, 1]
    plug.center[0] = world.center[0]
    plug.rotation[0] = world.rotation[0]
    plug.params[0, :2] = torch.tensor([float(big), float(small) * 0.8])  # a disc filling the hole
    plugged = render_world(plug, cameras)
    nearer = plugged["mask"] & (~out["mask"] | (plugged["depth"] < out["depth"]))
    depth = torch.where(nearer, plugged["depth"], out["depth"])
    alpha = (out["mask"] | plugged["mask"]).float()
    report = shape_report(cameras, depth, alpha, config, center=world.center[0])
    assert report["tunnels"] == 0 and not passes_as(report, "torus")
    assert not math.isnan(report["chamfer"]["torus"])
