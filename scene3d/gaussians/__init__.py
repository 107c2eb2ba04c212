"""3D Gaussian splatting: the scene, its rasterizers, densification, PLY files and fitting."""

from scene3d.gaussians.gsplat_api import rasterization
from scene3d.gaussians.rasterize import RenderOutput, rasterize, rasterize_gaussians
from scene3d.gaussians.scene import GaussianScene

__all__ = ["GaussianScene", "RenderOutput", "rasterization", "rasterize", "rasterize_gaussians"]
