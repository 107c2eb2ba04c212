"""PLY files that are not 3D Gaussians, drawn by the browser as what they are: triangle meshes (our TSDF
exports, a score-distillation field run's `mesh.ply`, any tool's) and point clouds (COLMAP's sparse
points). `open_ply` is the viewer's one entry for `.ply`: it reads the header and hands Gaussians to
`viewer.adapters.gaussians`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scene3d.data.points_ply import vertex_points
from scene3d.errors import DataError
from scene3d.plyfile import read_ply_elements, read_ply_kind
from viewer.adapters.gaussians import open_gaussians_ply
from viewer.content import ViewerContent, home_outside_box

MAX_POINTS = 2_000_000  # a larger cloud is drawn evenly strided (the browser holds every point)
DEFAULT_COLOR = (170, 170, 190)


def _bounds(points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = np.quantile(points[:: -(-len(points) // 2**20)], [0.01, 0.99], axis=0)
    return torch.from_numpy(lo).float(), torch.from_numpy(hi).float()


class MeshPanel:
    """A triangle mesh under `root`/mesh (one colour: the mean vertex colour, as viser's simple mesh takes)."""

    def __init__(self, server, vertices: np.ndarray, faces: np.ndarray, color: tuple[int, int, int], root: str = ""):
        self.handle = server.scene.add_mesh_simple(f"{root}/mesh", vertices, faces, color=color, flat_shading=False)
        with server.gui.add_folder("Mesh"):
            server.gui.add_markdown(f"{len(vertices):,} vertices, {len(faces):,} faces (drawn by the browser)")
            self.wireframe = server.gui.add_checkbox("Wireframe", initial_value=False)
        self.wireframe.on_update(lambda _: setattr(self.handle, "wireframe", bool(self.wireframe.value)))

    def close(self) -> None:
        """Nothing runs in the background."""


class PointsPanel:
    """A point cloud under `root`/points, with a point-size slider."""

    def __init__(self, server, points: np.ndarray, colors: np.ndarray, size: float, total: int, root: str = ""):
        self.handle = server.scene.add_point_cloud(f"{root}/points", points, colors, point_size=size,
                                                   point_shape="circle")
        with server.gui.add_folder("Points"):
            drawn = f"{len(points):,} of {total:,}" if total > len(points) else f"{total:,}"
            server.gui.add_markdown(f"{drawn} points (drawn by the browser)")
            self.size = server.gui.add_slider("Point size", min=size / 10, max=size * 10, step=size / 10,
                                              initial_value=size)
        self.size.on_update(lambda _: setattr(self.handle, "point_size", float(self.size.value)))

    def close(self) -> None:
        """Nothing runs in the background."""


def open_mesh_ply(path: Path) -> ViewerContent:
    elements = read_ply_elements(path)
    points, colors = vertex_points(path, elements["vertex"])
    face = elements.get("face", {})
    indices = face.get("vertex_indices", face.get("vertex_index"))
    if indices is None or indices.ndim != 2 or indices.shape[1] < 3:
        raise DataError(path, "face", "faces need a vertex_indices list of 3 or more vertices")
    if len(points) == 0 or (indices.size and (indices.min() < 0 or indices.max() >= len(points))):
        raise DataError(path, "face", f"vertex indices outside 0..{len(points) - 1}")
    # Polygons (quads, ...) as triangle fans.
    faces = np.concatenate([indices[:, [0, k, k + 1]] for k in range(1, indices.shape[1] - 1)]).astype(np.uint32)
    color = tuple(int(c) for c in colors.mean(0)) if colors is not None else DEFAULT_COLOR
    home, center = home_outside_box(*_bounds(points))
    return ViewerContent(f"mesh {path.name}", home=home, center=center,
                         extra_panels=[lambda server, root: MeshPanel(server, points, faces, color, root)])


def open_points_ply(path: Path) -> ViewerContent:
    points, colors = vertex_points(path, read_ply_elements(path)["vertex"])
    if len(points) == 0:
        raise DataError(path, "element vertex", "holds no points: nothing to show")
    total = len(points)
    stride = -(-total // MAX_POINTS)
    points = points[::stride]
    colors = np.broadcast_to(np.array(DEFAULT_COLOR, np.uint8), points.shape) if colors is None else colors[::stride]
    lo, hi = _bounds(points)
    size = 0.004 * float((hi - lo).norm().clamp_min(1e-6))
    home, center = home_outside_box(lo, hi)
    return ViewerContent(f"points {path.name}", home=home, center=center,
                         extra_panels=[lambda server, root: PointsPanel(server, points, np.ascontiguousarray(colors),
                                                                        size, total, root)])


def open_ply(path: Path) -> ViewerContent:
    """Any PLY: 3D Gaussians (rendered), a triangle mesh or a point cloud (drawn by the browser)."""
    kind = read_ply_kind(path)
    return {"gaussians": open_gaussians_ply, "mesh": open_mesh_ply, "points": open_points_ply}[kind](path)
