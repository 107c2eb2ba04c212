import pytest
import torch

from scene3d.cameras import orbit_cameras, random_sphere_cameras
from scene3d.data.scenes2d import make_scene_images
from scene3d.data.synthetic import OBJECT_TYPES, _torus_sdf, cast_rays, make_world, render_world


@pytest.fixture(scope="module")
def world():
    return make_world(5, object_types=["sphere", "box", "cylinder", "torus", "torus", "box"])


def _local_sdf(world, obj: int, x: torch.Tensor) -> torch.Tensor:
    """Signed distance (or exact implicit value) of world points to primitive `obj`."""
    q = (x - world.center[obj]) @ world.rotation[obj]
    p = world.params[obj]
    kind = OBJECT_TYPES[int(world.kind[obj])]
    if kind == "sphere":
        return q.norm(dim=-1) - p[0]
    if kind == "box":
        return ((q.abs() - p).clamp_min(0).norm(dim=-1) + (q.abs() - p).amax(-1).clamp_max(0))
    if kind == "cylinder":
        d = torch.stack([q[:, :2].norm(dim=-1) - p[0], q[:, 2].abs() - p[1]], -1)
        return d.clamp_min(0).norm(dim=-1) + d.amax(-1).clamp_max(0)
    return _torus_sdf(q, p[0], p[1])


def test_render_is_deterministic_and_seeded(world):
    cams = orbit_cameras(2, 3.5, width=24, height=24)
    a, b = render_world(world, cams), render_world(make_world(5, object_types=[
        "sphere", "box", "cylinder", "torus", "torus", "box"]), cams)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    c = render_world(make_world(6), cams)
    assert not torch.equal(a["rgb"], c["rgb"])


def test_every_hit_lies_on_its_surface_with_outward_unit_normal(world):
    cams = random_sphere_cameras(3, (3.0, 4.0), (10.0, 70.0), width=48, height=48,
                                 generator=torch.Generator().manual_seed(2))
    rays = cams.rays()
    hit = cast_rays(world, rays.origins.reshape(-1, 3), rays.dirs.reshape(-1, 3))
    inst = hit["instance"]
    assert set(inst.unique().tolist()) >= {0, 1, 2, 3, 4, 5}
    for obj in range(len(world)):
        sel = inst == obj + 2
        sdf = _local_sdf(world, obj, hit["points"][sel])
        assert sdf.abs().max() < 2e-4, (OBJECT_TYPES[int(world.kind[obj])], sdf.abs().max())
        # outward normals: stepping along the normal leaves the solid
        outside = _local_sdf(world, obj, hit["points"][sel] + 1e-3 * hit["normal"][sel])
        assert (outside > 0).float().mean() > 0.999
    on_ground = inst == 1
    assert hit["points"][on_ground][:, 2].abs().max() < 1e-5
    normals = hit["normal"][inst > 0]
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(len(normals)), atol=1e-5, rtol=0)
    # visible surfaces face the camera
    facing = (hit["normal"] * rays.dirs.reshape(-1, 3)).sum(-1)[inst > 0]
    assert (facing <= 1e-4).float().mean() > 0.999


def test_multi_view_consistency(world):
    """Unproject view A's pixels with A's depth, project into view B, re-cast there: where the point
    is visible from B, B's depth, label and position agree to sub-pixel accuracy."""
    cams = orbit_cameras(2, 3.6, 35.0, width=64, height=64, azimuth_offset_deg=10.0, target=(0, 0, 0.2))
    cams.c2w[1] = orbit_cameras(1, 3.2, 50.0, width=64, height=64, azimuth_offset_deg=55.0).c2w[0]
    a = render_world(world, cams[0])
    mask = a["mask"][0].reshape(-1)
    uv_a = cams[0].pixel_centers().reshape(1, -1, 2)
    x = cams[0].unproject(uv_a, a["depth"][0].reshape(1, -1))[0][mask]
    uv_b, z_b = cams[1].project(x[None])
    inside = ((uv_b[0] >= 0) & (uv_b[0] < 64)).all(-1)
    dirs = x[inside] - cams[1].centers
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    hit_b = cast_rays(world, cams[1].centers.expand_as(dirs), dirs)
    depth_b = hit_b["t"] * (dirs * cams[1].forward).sum(-1)
    visible = (depth_b - z_b[0][inside]).abs() < 1e-3
    assert visible.float().mean() > 0.4  # a real overlap between the views
    uv_hit, _ = cams[1].project(hit_b["points"][visible][None])
    assert (uv_hit[0] - uv_b[0][inside][visible]).norm(dim=-1).max() < 0.01  # sub-pixel
    labels_a = a["semantic"][0].reshape(-1)[mask][inside][visible]
    inst_a = a["instance"][0].reshape(-1)[mask][inside][visible]
    assert torch.equal(hit_b["semantic"][visible], labels_a)
    assert torch.equal(hit_b["instance"][visible], inst_a)
    # and on B's own 64x64 pixel grid: the pixel holding each reprojection mostly has the same label
    # (object boundaries at this resolution account for the rest)
    b = render_world(world, cams[1])
    px = uv_b[0][inside][visible].floor().long()
    grid_labels = b["semantic"][0][px[:, 1], px[:, 0]]
    assert (grid_labels == labels_a).float().mean() > 0.93


def test_depth_is_camera_z_and_background_is_empty(world):
    cams = orbit_cameras(1, 3.0, 30.0, width=32, height=32)
    r = render_world(world, cams, background=(0.0, 0.5, 1.0))
    rays = cams.rays()
    hit = cast_rays(world, rays.origins.reshape(-1, 3), rays.dirs.reshape(-1, 3))
    cos = (rays.dirs.reshape(-1, 3) * cams.forward).sum(-1)
    z = torch.where(hit["hit"], hit["t"] * cos, torch.zeros_like(cos))
    torch.testing.assert_close(r["depth"].reshape(-1), z)
    miss = ~r["mask"][0]
    assert miss.any()
    assert torch.equal(r["semantic"][0][miss], torch.zeros_like(r["semantic"][0][miss]))
    torch.testing.assert_close(r["rgb"][0][miss], torch.tensor([0.0, 0.5, 1.0]).expand(int(miss.sum()), 3))


def test_scene_images_have_labels_and_a_dominant_class():
    s = make_scene_images(6, resolution=48, seed=3)
    assert s.images.shape == (6, 3, 48, 48) and s.labels.shape == (6, 48, 48)
    assert s.images.min() >= 0 and s.images.max() <= 1
    assert s.labels.max() < s.num_classes and s.scene_class.max() < s.num_scene_classes
    again = make_scene_images(6, resolution=48, seed=3)
    assert torch.equal(s.images, again.images) and torch.equal(s.scene_class, again.scene_class)
    # the dominant type is visible in most scenes (labels use CLASS_NAMES = type index + 2)
    present = [(s.labels[i] == s.scene_class[i] + 2).any() for i in range(6)]
    assert sum(present) >= 5


def test_only_the_specular_term_depends_on_the_view():
    from scene3d.data.synthetic import WorldConfig, shade

    world = make_world(1, WorldConfig(specular=0.6))
    points_normal = torch.nn.functional.normalize(torch.tensor([[0.3, 0.2, 1.0], [0.0, 0.5, 1.0]]), dim=-1)
    albedo = torch.tensor([[0.5, 0.4, 0.3], [0.2, 0.6, 0.4]])
    light = world.light_dir
    d1 = -light.expand(2, 3)  # looking back along the light: the highlight
    d2 = torch.nn.functional.normalize(-light + torch.tensor([0.9, -0.9, 0.0]), dim=-1).expand(2, 3)
    assert not torch.allclose(shade(world, albedo, points_normal, d1), shade(world, albedo, points_normal, d2))
    world.specular = 0.0
    torch.testing.assert_close(shade(world, albedo, points_normal, d1), shade(world, albedo, points_normal, d2))
