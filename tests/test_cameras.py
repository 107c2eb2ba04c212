import math

import pytest
import torch

from scene3d.cameras import (
    Cameras,
    invert_rigid,
    look_at,
    opencv_to_opengl,
    opengl_to_opencv,
    orbit_cameras,
    random_sphere_cameras,
)
from scene3d.rays import intersect_aabb, stratified_samples


@pytest.fixture
def cams() -> Cameras:
    g = torch.Generator().manual_seed(0)
    c = random_sphere_cameras(7, (2.0, 5.0), (-20.0, 80.0), width=40, height=30, generator=g)
    c.K[:, 0, 2] += torch.linspace(-3, 3, 7)  # off-centre principal points
    c.K[:, 1, 1] *= 1.1  # non-square pixels
    return c


def test_opengl_opencv_round_trip(cams):
    gl = opencv_to_opengl(cams.c2w)
    assert not torch.allclose(gl, cams.c2w)
    torch.testing.assert_close(opengl_to_opencv(gl), cams.c2w)
    # OpenGL looks down -z: the OpenCV forward axis is minus the OpenGL z axis.
    torch.testing.assert_close(gl[:, :3, 2], -cams.forward)


def test_c2w_w2c_inverse(cams):
    eye = torch.eye(4).expand(len(cams), 4, 4)
    torch.testing.assert_close(cams.w2c @ cams.c2w, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(invert_rigid(cams.w2c), cams.c2w, atol=1e-5, rtol=0)


def test_project_unproject_round_trip(cams):
    g = torch.Generator().manual_seed(1)
    uv = torch.rand(len(cams), 50, 2, generator=g) * torch.tensor([40.0, 30.0])
    depth = 0.5 + 4 * torch.rand(len(cams), 50, generator=g)
    points = cams.unproject(uv, depth)
    uv2, depth2 = cams.project(points)
    torch.testing.assert_close(uv2, uv, atol=1e-3, rtol=0)
    torch.testing.assert_close(depth2, depth, atol=1e-4, rtol=0)


def test_look_at_frame_is_right_handed_opencv():
    eyes = torch.tensor([[3.0, 0.0, 1.0], [0.0, -4.0, 2.0], [0.0, 0.0, 5.0]])
    c2w = look_at(eyes, torch.zeros(3))
    rot = c2w[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand(3, 3, 3), atol=1e-6, rtol=0)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(3))
    torch.testing.assert_close(c2w[:, :3, 2], -eyes / eyes.norm(dim=-1, keepdim=True))
    # y (image down) points against world up for the non-degenerate cameras
    assert (c2w[:2, 2, 1] < 0).all()


def test_target_projects_to_principal_point_and_rays_hit_pixel_centres():
    cams = orbit_cameras(4, 3.0, 30.0, width=20, height=16, target=(0.1, -0.2, 0.3))
    uv, z = cams.project(torch.tensor([[0.1, -0.2, 0.3]]))
    torch.testing.assert_close(uv[:, 0], torch.tensor([[10.0, 8.0]]).expand(4, 2), atol=1e-4, rtol=0)
    rays = cams.rays()
    assert rays.shape == (4, 16, 20)
    torch.testing.assert_close(rays.dirs.norm(dim=-1), torch.ones(4, 16, 20))
    # a point along the ray of pixel (row 3, col 5) projects to that pixel's centre (5.5, 3.5)
    pts = rays.origins[:, 3, 5] + 2.0 * rays.dirs[:, 3, 5]
    uv, _ = cams.project(pts[:, None])
    torch.testing.assert_close(uv[:, 0], torch.tensor([[5.5, 3.5]]).expand(4, 2), atol=1e-4, rtol=0)


def test_scaled_cameras_keep_the_geometry():
    cams = orbit_cameras(2, 3.0, width=64, height=48)
    half = cams.scaled(0.5)
    assert (half.width, half.height) == (32, 24)
    p = torch.tensor([[0.2, 0.1, 0.3]])
    uv_full, _ = cams.project(p)
    uv_half, _ = half.project(p)
    torch.testing.assert_close(uv_half, uv_full / 2)
    torch.testing.assert_close(half.fov_x, cams.fov_x)


def test_fov_and_indexing():
    cams = Cameras.from_fov(look_at(torch.tensor([[0.0, -3.0, 0.0]]), torch.zeros(3)), math.radians(60), 32, 32)
    assert math.isclose(float(cams.fov_x[0]), math.radians(60), rel_tol=1e-5)
    both = Cameras.cat([cams, cams])
    assert len(both) == 2 and len(both[1]) == 1
    with pytest.raises(ValueError, match="c2w"):
        Cameras(torch.eye(3), torch.eye(3), 4, 4)


def test_aabb_intersection_and_stratified_samples():
    origins = torch.tensor([[-2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-2.0, 2.0, 0.0]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    t_in, t_out, hit = intersect_aabb(origins, dirs, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    torch.testing.assert_close(t_in[:2], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(t_out[:2], torch.tensor([3.0, 1.0]))
    assert hit.tolist() == [True, True, False]
    s = stratified_samples(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0]), 8, perturb=True,
                           generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.deltas.sum(-1), torch.tensor([2.0, 4.0]))
    assert (s.t[:, 1:] > s.t[:, :-1]).all() and (s.t[:, 0] >= torch.tensor([1.0, 2.0])).all()
    mid = stratified_samples(torch.tensor([0.0]), torch.tensor([1.0]), 4, perturb=False)
    torch.testing.assert_close(mid.t, torch.tensor([[0.125, 0.375, 0.625, 0.875]]))
