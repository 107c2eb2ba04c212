"""Shape checks of a distilled object that read 3D geometry, not silhouettes.

The object is observed through rendered depth and opacity from `shape_views` (rings of cameras
around the origin, from below the prior's band to overhead), and two facts are read from them:

- **Topology**: depth-based space carving (a voxel is free when some view sees past it: background
  at its pixel, or a surface behind it) leaves the solid; its largest 26-connected component with
  cavities filled has Euler characteristic chi = 1 - tunnels. A torus has one tunnel (its hole),
  a sphere, box or cylinder none.
- **Shape family**: the solid's boundary voxels, centred and scaled to unit RMS radius, are fitted
  by each ground-truth primitive family of the synthetic worlds (sphere, box, cylinder, ring torus;
  free pose and parameters); the symmetric Chamfer distance of the best fit says how close the
  object is to each family, and the nearest family is the verdict.

`shape_report` measures both; `passes_as(report, prompt)` is the check: the nearest family is the
prompt's and the tunnel count is the family's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.config import Range
from scene3d.diffusion.data import cameras_at

FAMILIES = ("sphere", "box", "cylinder", "torus")
TUNNELS = {"sphere": 0, "box": 0, "cylinder": 0, "torus": 1}


@dataclass
class ShapeCheckConfig:
    """Views (rings of `azimuths` cameras at each elevation, degrees, plus one overhead), the
    carving grid (`resolution`^3 voxels over [-extent, extent]^3) and the primitive fits."""

    elevations: Annotated[tuple[float, ...], Range(-89, 89)] = (-20.0, 10.0, 40.0, 70.0)
    azimuths: Annotated[int, Range(1)] = 12
    size: Annotated[int, Range(8, 4096)] = 64
    distance: Annotated[float, Range(0, above=True)] = 1.85
    fov_x_deg: Annotated[float, Range(0, 179, above=True)] = 40.0
    extent: Annotated[float, Range(0, above=True)] = 0.6
    resolution: Annotated[int, Range(4, 256)] = 48
    alpha_threshold: Annotated[float, Range(0, 1, above=True)] = 0.5
    tolerance_voxels: Annotated[float, Range(0)] = 1.5  # a voxel is seen past only if it lies this far in front
    points: Annotated[int, Range(10)] = 600
    fit_steps: Annotated[int, Range(1)] = 120
    fit_starts: Annotated[int, Range(1)] = 4  # start orientations: identity, 90 degrees about x, y, random


def shape_views(config: ShapeCheckConfig, center: Tensor | None = None) -> Cameras:
    """Cameras looking at `center` (default origin) from every ring and from overhead."""
    az = torch.arange(config.azimuths) * 2 * math.pi / config.azimuths
    el = torch.tensor([math.radians(e) for e in config.elevations])
    az, el = rearrange(az, "a -> 1 a").expand(len(el), -1), rearrange(el, "e -> e 1").expand(-1, len(az))
    az = torch.cat([az.reshape(-1), torch.zeros(1)])
    el = torch.cat([el.reshape(-1), torch.tensor([math.radians(89.0)])])
    return cameras_at(az, el, torch.full_like(az, config.distance), config.fov_x_deg, config.size, target=center)


# topology ------------------------------------------------------------------------------------------


def carve(cameras: Cameras, depth: Float[Tensor, "N H W"], alpha: Float[Tensor, "N H W"], lo: Tensor, hi: Tensor,
          resolution: int, alpha_threshold: float = 0.5, tolerance_voxels: float = 1.5) -> np.ndarray:
    """Bool [R,R,R] (x, y, z) occupancy of the box [lo, hi]: voxels no view sees past. `depth` is
    camera z where alpha >= alpha_threshold."""
    axes = [torch.linspace(float(lo[i]), float(hi[i]), resolution + 1)[:-1] + (float(hi[i] - lo[i]) / resolution) / 2
            for i in range(3)]
    centres = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    tolerance = tolerance_voxels * float((hi - lo).max()) / resolution
    free = torch.zeros(len(centres), dtype=torch.bool)
    for i in range(len(cameras)):
        uv, z = cameras[i].project(centres)
        uv, z = uv[0], z[0]
        px, py = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        seen = (z > 0) & (px >= 0) & (px < cameras.width) & (py >= 0) & (py < cameras.height)
        px, py = px.clamp(0, cameras.width - 1), py.clamp(0, cameras.height - 1)
        empty = alpha[i, py, px] < alpha_threshold
        in_front = z < depth[i, py, px] - tolerance
        free |= seen & (empty | in_front)
    return (~free).reshape(resolution, resolution, resolution).numpy()


def largest_solid(occupancy: np.ndarray) -> tuple[np.ndarray, int]:
    """(the largest 26-connected component with its cavities filled, the number of components)."""
    from scipy import ndimage

    labels, components = ndimage.label(occupancy, structure=np.ones((3, 3, 3)))
    if components == 0:
        return np.zeros_like(occupancy), 0
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == (1 + int(sizes.argmax()))), int(components)


def tunnels(solid: np.ndarray) -> int:
    """Tunnels (handles) of one cavity-free solid: 1 - Euler characteristic (26-connected solid
    against a 6-connected background)."""
    from skimage.measure import euler_number

    return int(1 - euler_number(np.pad(solid, 1), connectivity=3)) if solid.any() else 0


def boundary_points(solid: np.ndarray, lo: Tensor, hi: Tensor) -> Float[Tensor, "P 3"]:
    """World centres of the solid's voxels that touch its outside (6-neighbourhood)."""
    from scipy import ndimage

    shell = solid & ~ndimage.binary_erosion(solid, border_value=0)
    index = torch.from_numpy(np.argwhere(shell)).float()
    step = (hi - lo) / solid.shape[0]
    return lo + (index + 0.5) * step


# shape family --------------------------------------------------------------------------------------


def rotation_matrix(axis_angle: Float[Tensor, "K 3"]) -> Float[Tensor, "K 3 3"]:
    """Rodrigues' formula through the matrix exponential of the skew matrix."""
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)
    return torch.linalg.matrix_exp(skew)


def primitive_params(family: str, raw: Float[Tensor, "K 3"]) -> Float[Tensor, "K 3"]:
    """Positive parameters from unconstrained ones (sphere: r; box: half extents; cylinder: radius,
    half height; torus: major R > minor r, a ring torus with a hole)."""
    e = raw.exp()
    if family == "torus":
        return torch.stack([e[:, 1] * (1 + e[:, 0]), e[:, 1], e[:, 2]], -1)
    return e


def primitive_sdf(family: str, p: Float[Tensor, "K 3"], q: Float[Tensor, "K P 3"]) -> Float[Tensor, "K P"]:
    """Signed distance of local points q to primitives with parameters p (z is the symmetry axis)."""
    if family == "sphere":
        return q.norm(dim=-1) - p[:, None, 0]
    if family == "box":
        d = q.abs() - p[:, None, :]
        return d.clamp_min(0).norm(dim=-1) + d.amax(-1).clamp_max(0)
    if family == "cylinder":
        d = torch.stack([q[..., :2].norm(dim=-1) - p[:, None, 0], q[..., 2].abs() - p[:, None, 1]], -1)
        return d.clamp_min(0).norm(dim=-1) + d.amax(-1).clamp_max(0)
    if family == "torus":
        ring = q[..., :2].norm(dim=-1) - p[:, None, 0]
        return torch.stack([ring, q[..., 2]], -1).norm(dim=-1) - p[:, None, 1]
    raise ValueError(f"unknown shape family '{family}'; choose from {FAMILIES}")


def primitive_surface(family: str, p: Float[Tensor, "K 3"], u: Float[Tensor, "P 4"]) -> Float[Tensor, "K P 3"]:
    """Local surface points from uniform numbers u in [0,1)^4 (differentiable in p); box faces and
    cylinder parts are drawn in proportion to their areas."""
    k = len(p)
    if family == "sphere":
        z = 2 * u[:, 0] - 1
        phi = 2 * math.pi * u[:, 1]
        s = (1 - z**2).clamp_min(0).sqrt()
        return torch.stack([s * phi.cos(), s * phi.sin(), z], -1)[None] * p[:, None, :1]
    if family == "box":
        a = p[:, None, :]  # [K,1,3]
        areas = torch.stack([a[..., 1] * a[..., 2], a[..., 0] * a[..., 2], a[..., 0] * a[..., 1]], -1)  # faces ⟂ x,y,z
        cum = (areas / areas.sum(-1, keepdim=True)).detach().cumsum(-1)
        axis = (u[None, :, 0:1] > cum[..., :2]).sum(-1)  # [K,P] face normal axis
        sign = torch.where(u[:, 3] < 0.5, -1.0, 1.0)[None].expand(k, -1)
        coords = (u[None, :, 1:3] * 2 - 1).expand(k, -1, -1)
        out = []
        for ax in range(3):
            others = [i for i in range(3) if i != ax]
            point = torch.zeros(k, len(u), 3)
            point[..., ax] = sign
            point[..., others[0]] = coords[..., 0]
            point[..., others[1]] = coords[..., 1]
            out.append(point)
        unit = torch.stack(out, 0).gather(0, axis[None, ..., None].expand(1, -1, -1, 3))[0]
        return unit * a
    if family == "cylinder":
        radius, half = p[:, None, 0], p[:, None, 1]
        side_area, cap_area = 4 * math.pi * radius * half, 2 * math.pi * radius**2
        on_side = u[None, :, 0] < (side_area / (side_area + cap_area)).detach()
        phi = 2 * math.pi * u[None, :, 1]
        side = torch.stack([radius * phi.cos(), radius * phi.sin(), half * (2 * u[None, :, 2] - 1)], -1)
        rho = radius * u[None, :, 2].sqrt()
        cap_z = torch.where(u[None, :, 3] < 0.5, -half, half)
        cap = torch.stack([rho * phi.cos(), rho * phi.sin(), cap_z], -1)
        return torch.where(on_side[..., None], side, cap)
    if family == "torus":
        big, small = p[:, None, 0], p[:, None, 1]
        theta, phi = 2 * math.pi * u[None, :, 0], 2 * math.pi * u[None, :, 1]
        ring = big + small * phi.cos()
        return torch.stack([ring * theta.cos(), ring * theta.sin(), small * phi.sin()], -1)
    raise ValueError(f"unknown shape family '{family}'; choose from {FAMILIES}")


def _start_rotations(n: int, generator: torch.Generator) -> Tensor:
    fixed = torch.tensor([[0.0, 0.0, 0.0], [math.pi / 2, 0.0, 0.0], [0.0, math.pi / 2, 0.0]])
    extra = (torch.rand(max(0, n - 3), 3, generator=generator) * 2 - 1) * math.pi
    return torch.cat([fixed, extra])[:n]


def fit_primitive(family: str, points: Float[Tensor, "P 3"], steps: int = 120, starts: int = 4,
                  generator: torch.Generator | None = None) -> dict:
    """Best fit of `family` to points already centred and scaled to unit RMS radius: Adam over pose
    (centre, axis-angle) and parameters from `starts` orientations at once; the loss is the symmetric
    Chamfer distance (mean point-to-surface |SDF| + mean surface-sample-to-nearest-point distance)."""
    generator = generator or torch.Generator().manual_seed(0)
    starts = 1 if family == "sphere" else starts
    init = {"sphere": [1.0, 1.0, 1.0], "box": [0.8, 0.8, 0.8], "cylinder": [0.9, 0.9, 1.0],
            "torus": [1.0, 0.35, 1.0]}[family]
    raw = torch.tensor(init).log().expand(starts, 3).clone().requires_grad_(True)
    rot = _start_rotations(starts, generator).requires_grad_(True)
    centre = torch.zeros(starts, 3, requires_grad=True)
    u = torch.rand(len(points), 4, generator=generator)
    optimizer = torch.optim.Adam([raw, rot, centre], lr=0.05)

    def chamfer() -> Tensor:
        r, p = rotation_matrix(rot), primitive_params(family, raw)
        local = torch.einsum("kji,kpj->kpi", r, points[None] - centre[:, None])  # R^T (x - c)
        to_surface = primitive_sdf(family, p, local).abs().mean(-1)
        samples = primitive_surface(family, p, u)
        to_points = torch.cdist(samples, local).amin(-1).mean(-1)
        return to_surface + to_points

    for _ in range(steps):
        loss = chamfer().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        losses = chamfer()
        best = int(losses.argmin())
        return {"chamfer": float(losses[best]), "params": primitive_params(family, raw)[best].tolist()}


def normalise(points: Float[Tensor, "P 3"]) -> Float[Tensor, "P 3"]:
    """Centred on the centroid and scaled to unit RMS radius (the alignment before fitting)."""
    centred = points - points.mean(0)
    return centred / centred.norm(dim=-1).pow(2).mean().sqrt().clamp_min(1e-8)


def shape_report(cameras: Cameras, depth: Float[Tensor, "N H W"], alpha: Float[Tensor, "N H W"],
                 config: ShapeCheckConfig | None = None, center: Tensor | None = None, seed: int = 0) -> dict:
    """Components of the carved occupancy, tunnels of its largest solid, the Chamfer distance of the
    best fit of every family to that solid's boundary and the nearest family (None when the solid
    has fewer than 10 boundary voxels)."""
    config = config or ShapeCheckConfig()
    center = torch.zeros(3) if center is None else center
    generator = torch.Generator().manual_seed(seed)
    lo, hi = center - config.extent, center + config.extent
    depth = torch.where(alpha >= config.alpha_threshold, depth, torch.zeros_like(depth))
    occupancy = carve(cameras, depth, alpha, lo, hi, config.resolution, config.alpha_threshold,
                      config.tolerance_voxels)
    solid, components = largest_solid(occupancy)
    report: dict = {"components": components, "tunnels": tunnels(solid), "voxels": int(solid.sum())}
    points = boundary_points(solid, lo, hi)
    if len(points) < 10:
        return {**report, "chamfer": {}, "nearest": None}
    if len(points) > config.points:
        points = points[torch.randperm(len(points), generator=generator)[: config.points]]
    unit = normalise(points)
    chamfer = {f: fit_primitive(f, unit, config.fit_steps, config.fit_starts, generator)["chamfer"] for f in FAMILIES}
    return {**report, "chamfer": chamfer, "nearest": min(chamfer, key=chamfer.get)}


def passes_as(report: dict, prompt: str) -> bool:
    """The shape check: the nearest family is `prompt` and the solid has that family's tunnels."""
    return report["nearest"] == prompt and report["tunnels"] == TUNNELS.get(prompt, -1)
