import math

import numpy as np
import torch

from scene3d.cameras import random_sphere_cameras
from scene3d.export import gaussians_to_mesh, gaussians_to_point_cloud, save_mesh, save_point_cloud
from scene3d.gaussians import GaussianScene


def _sphere_of_gaussians(radius=0.5, n=6000):
    """Flat opaque Gaussians tangent to an analytic sphere (Fibonacci points, disc normal = radial).
    Rendered depth is the blend of Gaussian-centre depths, biased towards the camera by about
    sigma at oblique incidence (the known 3DGS centre-depth bias), so the tolerance is ~1.5 voxels."""
    i = torch.arange(n, dtype=torch.float32) + 0.5
    phi, theta = torch.acos(1 - 2 * i / n), math.pi * (1 + 5**0.5) * i
    normal = torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], -1)
    # quaternion rotating +z onto the normal
    z = torch.tensor([0.0, 0.0, 1.0])
    axis = torch.linalg.cross(z.expand_as(normal), normal)
    quats = torch.cat([1 + normal[:, 2:3], axis], -1)
    quats[normal[:, 2] < -0.999] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    spacing = math.sqrt(4 * math.pi * radius**2 / n)
    log_scales = torch.log(torch.tensor([spacing, spacing, spacing * 0.05])).expand(n, 3)
    colors = torch.full((n, 1, 3), 0.8)
    return GaussianScene(normal * radius, quats, log_scales, torch.full((n,), 4.0), sh0=colors)


def test_tsdf_mesh_lies_on_the_sphere(tmp_path):
    scene = _sphere_of_gaussians()
    cams = random_sphere_cameras(16, radius=(2.0, 2.5), elevation_deg=(-60.0, 60.0), width=64, height=64,
                                 generator=torch.Generator().manual_seed(0))
    mesh = gaussians_to_mesh(scene, cams, torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), voxel_size=0.02)
    verts = np.asarray(mesh.vertices)
    assert len(verts) > 500 and len(np.asarray(mesh.triangles)) > 500
    err = np.abs(np.linalg.norm(verts, axis=1) - 0.5)
    assert err.mean() < 0.035 and np.quantile(err, 0.95) < 0.06
    assert save_mesh(tmp_path / "m.ply", mesh).stat().st_size > 0


def test_point_cloud_export(tmp_path):
    scene = _sphere_of_gaussians(n=100)
    pcd = gaussians_to_point_cloud(scene)
    assert len(pcd.points) == 100
    np.testing.assert_allclose(np.asarray(pcd.colors), 0.8 * 0.28209479177387814 + 0.5, rtol=1e-5)
    assert save_point_cloud(tmp_path / "p.ply", pcd).stat().st_size > 0
