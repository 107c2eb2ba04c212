"""scene3d: the shared scene representation layer (cameras, rays, fields, Gaussians, rendering)
and the 3D distillers built on it."""

from scene3d.cameras import Cameras, look_at, orbit_cameras, random_sphere_cameras
from scene3d.errors import CheckpointError, DataError, Scene3DError
from scene3d.rays import Rays

__all__ = [
    "Cameras",
    "CheckpointError",
    "DataError",
    "Rays",
    "Scene3DError",
    "look_at",
    "orbit_cameras",
    "random_sphere_cameras",
]
