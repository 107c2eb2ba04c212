"""Volume rendering of radiance fields: quadrature weights, compositing, occupancy-grid skipping."""

from scene3d.render.occupancy import OccupancyGrid, OccupancyGridConfig, render_occupancy
from scene3d.render.renderer import render_image, render_rays
from scene3d.render.volume import accumulate, blend_background, composite, compute_weights, expected_distance

__all__ = [
    "OccupancyGrid",
    "OccupancyGridConfig",
    "accumulate",
    "blend_background",
    "composite",
    "compute_weights",
    "expected_distance",
    "render_image",
    "render_occupancy",
    "render_rays",
]
