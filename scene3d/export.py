"""Point clouds and meshes with open3d: TSDF fusion of RGB-D views, Gaussian centres as points.

open3d is imported lazily (it is heavy). Its pinhole model puts pixel i at coordinate i (ours at
i + 0.5), so the principal point is shifted by half a pixel on the way in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from scene3d.cameras import Cameras


def _o3d():
    import open3d as o3d

    return o3d


def tsdf_fusion(cameras: Cameras, rgb: Float[Tensor, "N H W 3"], depth: Float[Tensor, "N H W"],
                aabb: Float[Tensor, "2 3"], voxel_size: float, sdf_trunc: float | None = None,
                depth_max: float = 100.0, max_resolution: int = 256):
    """Fuse N RGB-D views (camera-z depth, 0 = no data) inside the box `aabb` into an open3d
    TriangleMesh (a uniform TSDF grid; the voxel grows if the box needs > max_resolution^3 voxels)."""
    o3d = _o3d()
    lo, hi = aabb[0].double().cpu().numpy(), aabb[1].double().cpu().numpy()
    length = float((hi - lo).max())
    resolution = min(max_resolution, int(np.ceil(length / voxel_size)))
    volume = o3d.pipelines.integration.UniformTSDFVolume(
        length=length, resolution=resolution, sdf_trunc=sdf_trunc or 4 * length / resolution,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8, origin=lo.reshape(3, 1))
    w2c = cameras.w2c.detach().cpu().double().numpy()
    K = cameras.K.detach().cpu().double().numpy()
    for i in range(len(cameras)):
        rgb8 = (rgb[i].detach().cpu().clamp(0, 1).numpy() * 255).astype(np.uint8)
        color = o3d.geometry.Image(np.ascontiguousarray(rgb8))
        dep = o3d.geometry.Image(np.ascontiguousarray(depth[i].detach().cpu().float().numpy()))
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            color, dep, depth_scale=1.0, depth_trunc=depth_max, convert_rgb_to_intensity=False)
        intr = o3d.camera.PinholeCameraIntrinsic(cameras.width, cameras.height, K[i, 0, 0], K[i, 1, 1],
                                                 K[i, 0, 2] - 0.5, K[i, 1, 2] - 0.5)
        volume.integrate(rgbd, intr, w2c[i])
    mesh = volume.extract_triangle_mesh()
    mesh.compute_vertex_normals()
    return mesh


@torch.no_grad()
def gaussians_to_mesh(scene, cameras: Cameras, aabb: Tensor, voxel_size: float, alpha_min: float = 0.5, **kwargs):
    """Render RGB-D of a Gaussian scene from `cameras` (depth kept where alpha >= alpha_min) and fuse it."""
    from scene3d.gaussians.rasterize import rasterize

    colors, depths = [], []
    for i in range(len(cameras)):  # one view at a time keeps memory flat
        out = rasterize(scene, cameras[i], background=(0.0, 0.0, 0.0))
        colors.append(out.colors[..., :3] / out.alpha[..., None].clamp_min(1e-6))
        depths.append(torch.where(out.alpha >= alpha_min, out.depth, torch.zeros_like(out.depth)))
    return tsdf_fusion(cameras, torch.cat(colors), torch.cat(depths), aabb, voxel_size, **kwargs)


def gaussians_to_point_cloud(scene, min_opacity: float = 0.0):
    """The Gaussian centres as an open3d PointCloud coloured by their view-independent (DC) colour."""
    from scene3d.gaussians.sh import sh_to_rgb

    o3d = _o3d()
    keep = scene.opacities.detach() >= min_opacity
    pts = scene.means.detach()[keep].cpu().double().numpy()
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    if not scene.is_feature_scene:
        rgb = sh_to_rgb(scene.params["sh0"].detach()[keep, 0]).clamp(0, 1).cpu().double().numpy()
        pcd.colors = o3d.utility.Vector3dVector(rgb)
    return pcd


def _write(path: str | Path, write, what: str) -> Path:
    """Run an open3d writer (which reports failure by returning False) into a fresh folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not write(str(path)):
        raise OSError(f"open3d could not write the {what} to {path}")
    return path


def save_mesh(path: str | Path, mesh) -> Path:
    return _write(path, lambda p: _o3d().io.write_triangle_mesh(p, mesh), "mesh")


def save_point_cloud(path: str | Path, pcd) -> Path:
    return _write(path, lambda p: _o3d().io.write_point_cloud(p, pcd), "point cloud")
