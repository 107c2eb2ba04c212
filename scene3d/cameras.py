"""Batched cameras: pinhole intrinsics plus an optional lens distortion (`scene3d.camera_models`).

Conventions (the whole library): OpenCV camera axes (x right, y down, z forward), camera-to-world
matrices `c2w`, pixel centres at +0.5 (pixel (0, 0) covers [0, 1) x [0, 1)), depth maps hold the
camera-space z (not the distance along the ray). Files in the OpenGL convention (nerfstudio,
Blender: x right, y up, z backward) are converted at the boundary with `opengl_to_opencv`.
World frame of the synthetic worlds: z up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from scene3d.camera_models import LENSES, distort, undistort
from scene3d.rays import Rays

# Flips the camera y and z axes; its own inverse, so it converts both ways.
_GL_CV_FLIP = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def opengl_to_opencv(c2w: Float[Tensor, "*B 4 4"]) -> Float[Tensor, "*B 4 4"]:
    """c2w with OpenGL camera axes -> c2w with OpenCV camera axes (and back: it is an involution)."""
    return c2w @ _GL_CV_FLIP.to(c2w)


opencv_to_opengl = opengl_to_opencv


def invert_rigid(m: Float[Tensor, "*B 4 4"]) -> Float[Tensor, "*B 4 4"]:
    """Inverse of rigid transforms [R t; 0 1] -> [R^T, -R^T t; 0 1]."""
    rot_t = m[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(m)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ m[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def intrinsics_from_fov(fov_x: float, width: int, height: int, fov_y: float | None = None) -> Tensor:
    """K [3,3] for horizontal field of view `fov_x` (radians), centred principal point."""
    fx = 0.5 * width / math.tan(0.5 * fov_x)
    fy = fx if fov_y is None else 0.5 * height / math.tan(0.5 * fov_y)
    return torch.tensor([[fx, 0.0, width / 2], [0.0, fy, height / 2], [0.0, 0.0, 1.0]])


@dataclass
class Cameras:
    """N cameras sharing one image size and one lens model.

    c2w: [N,4,4] camera-to-world (OpenCV axes); K: [N,3,3] intrinsics in pixels; lens: "PINHOLE",
    "OPENCV" or "OPENCV_FISHEYE"; distortion: [N,6] = [k1, k2, k3, k4, p1, p2] (None for PINHOLE).
    """

    c2w: Float[Tensor, "N 4 4"]
    K: Float[Tensor, "N 3 3"]
    width: int
    height: int
    lens: str = "PINHOLE"
    distortion: Float[Tensor, "N 6"] | None = None

    def __post_init__(self) -> None:
        if self.c2w.ndim == 2:
            self.c2w = self.c2w[None]
        if self.c2w.shape[-2:] != (4, 4) or self.c2w.ndim != 3:
            raise ValueError(f"Cameras.c2w must be [N,4,4], got {tuple(self.c2w.shape)}")
        if self.K.ndim == 2:
            self.K = self.K[None].repeat(len(self.c2w), 1, 1)
        if self.K.shape != (len(self.c2w), 3, 3):
            raise ValueError(f"Cameras.K must be [N,3,3] with N={len(self.c2w)}, got {tuple(self.K.shape)}")
        self.K = self.K.to(self.c2w)
        self.width, self.height = int(self.width), int(self.height)
        if self.lens not in LENSES:
            raise ValueError(f"Cameras.lens must be one of {LENSES}, got {self.lens!r}")
        if self.lens == "PINHOLE":
            if self.distortion is not None:
                raise ValueError("Cameras.distortion must be None for a PINHOLE lens")
            return
        if self.distortion is None:
            raise ValueError(f"Cameras.distortion [N,6] is required for a {self.lens} lens")
        if self.distortion.ndim == 1:
            self.distortion = self.distortion[None].repeat(len(self.c2w), 1)
        if self.distortion.shape != (len(self.c2w), 6):
            raise ValueError(f"Cameras.distortion must be [N,6] with N={len(self.c2w)}, "
                             f"got {tuple(self.distortion.shape)}")
        self.distortion = self.distortion.to(self.c2w)

    # construction ----------------------------------------------------------------------------
    @classmethod
    def from_fov(cls, c2w: Tensor, fov_x: float, width: int, height: int) -> Cameras:
        """Cameras with horizontal field of view `fov_x` in radians and square pixels."""
        return cls(c2w, intrinsics_from_fov(fov_x, width, height).to(c2w), width, height)

    @staticmethod
    def cat(cameras: list[Cameras]) -> Cameras:
        sizes = {(c.width, c.height) for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"cannot concatenate cameras of different image sizes {sorted(sizes)}")
        lenses = {c.lens for c in cameras}
        if len(lenses) != 1:
            raise ValueError(f"cannot concatenate cameras of different lenses {sorted(lenses)}")
        lens = cameras[0].lens
        dist = None if lens == "PINHOLE" else torch.cat([c.distortion for c in cameras])
        return Cameras(torch.cat([c.c2w for c in cameras]), torch.cat([c.K for c in cameras]),
                       cameras[0].width, cameras[0].height, lens, dist)

    # batch behaviour ------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index: int | slice | list | Tensor) -> Cameras:
        """Index the batch; an integer keeps a batch of one."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        dist = None if self.distortion is None else self.distortion[index]
        return Cameras(self.c2w[index], self.K[index], self.width, self.height, self.lens, dist)

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, *args, **kwargs) -> Cameras:
        dist = None if self.distortion is None else self.distortion.to(*args, **kwargs)
        return Cameras(self.c2w.to(*args, **kwargs), self.K.to(*args, **kwargs), self.width, self.height,
                       self.lens, dist)

    @property
    def is_pinhole(self) -> bool:
        return self.lens == "PINHOLE"

    def with_c2w(self, c2w: Float[Tensor, "N 4 4"]) -> Cameras:
        """The same intrinsics and lens at other poses."""
        return Cameras(c2w, self.K, self.width, self.height, self.lens, self.distortion)

    # geometry ---------------------------------------------------------------------------------
    @property
    def w2c(self) -> Float[Tensor, "N 4 4"]:
        return invert_rigid(self.c2w)

    @property
    def centers(self) -> Float[Tensor, "N 3"]:
        return self.c2w[:, :3, 3]

    @property
    def forward(self) -> Float[Tensor, "N 3"]:
        """Unit optical axes (camera +z) in world space."""
        return self.c2w[:, :3, 2]

    @property
    def fov_x(self) -> Float[Tensor, " N"]:
        return 2 * torch.atan(0.5 * self.width / self.K[:, 0, 0])

    @property
    def fov_y(self) -> Float[Tensor, " N"]:
        return 2 * torch.atan(0.5 * self.height / self.K[:, 1, 1])

    def scaled(self, factor: float) -> Cameras:
        """The same cameras at `factor` times the resolution (intrinsics rescaled exactly)."""
        width, height = round(self.width * factor), round(self.height * factor)
        scale = torch.tensor([width / self.width, height / self.height, 1.0]).to(self.K)
        return Cameras(self.c2w, self.K * scale[None, :, None], width, height, self.lens, self.distortion)

    def pixel_centers(self) -> Float[Tensor, "H W 2"]:
        """(u, v) pixel-centre coordinates (+0.5) of every pixel, as [H, W, 2]."""
        v, u = torch.meshgrid(torch.arange(self.height, device=self.device, dtype=self.c2w.dtype) + 0.5,
                              torch.arange(self.width, device=self.device, dtype=self.c2w.dtype) + 0.5,
                              indexing="ij")
        return torch.stack([u, v], dim=-1)

    def pixel_dirs_camera(self, uv: Float[Tensor, "N P 2"]) -> Float[Tensor, "N P 3"]:
        """Camera-space directions with z = 1 through pixel coordinates uv (lens distortion undone)."""
        fx, fy = self.K[:, 0, 0, None], self.K[:, 1, 1, None]
        cx, cy = self.K[:, 0, 2, None], self.K[:, 1, 2, None]
        x = (uv[..., 0] - cx) / fx
        y = (uv[..., 1] - cy) / fy
        if not self.is_pinhole:
            xy = undistort(torch.stack([x, y], dim=-1), self.distortion[:, None, :], self.lens)
            x, y = xy[..., 0], xy[..., 1]
        return torch.stack([x, y, torch.ones_like(x)], dim=-1)

    def rays(self, near: float = 0.0, far: float = 1e10) -> Rays:
        """One ray per pixel centre: origins and unit directions [N,H,W,3]."""
        uv = rearrange(self.pixel_centers(), "h w c -> 1 (h w) c").expand(len(self), -1, -1)
        dirs_cam = self.pixel_dirs_camera(uv)
        dirs = torch.einsum("nij,npj->npi", self.c2w[:, :3, :3], dirs_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        dirs = rearrange(dirs, "n (h w) c -> n h w c", h=self.height)
        origins = self.centers[:, None, None, :].expand_as(dirs)
        full = torch.full(dirs.shape[:-1], 1.0, device=self.device, dtype=dirs.dtype)
        return Rays(origins, dirs, full * near, full * far)

    def world_to_camera(self, points: Float[Tensor, "N P 3"]) -> Float[Tensor, "N P 3"]:
        w2c = self.w2c
        return torch.einsum("nij,npj->npi", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]

    def project(self, points: Float[Tensor, "N P 3"] | Float[Tensor, "P 3"]
                ) -> tuple[Float[Tensor, "N P 2"], Float[Tensor, "N P"]]:
        """World points -> (pixel coordinates uv, camera z depth). [P,3] is shared by all cameras."""
        if points.ndim == 2:
            points = points[None].expand(len(self), -1, -1)
        cam = self.world_to_camera(points)
        z = cam[..., 2]
        xy = cam[..., :2] / z[..., None]
        if not self.is_pinhole:
            xy = distort(xy, self.distortion[:, None, :], self.lens)
        uv = torch.einsum("nij,npj->npi", self.K[:, :2, :2], xy) + self.K[:, None, :2, 2]
        return uv, z

    def unproject(self, uv: Float[Tensor, "N P 2"], depth: Float[Tensor, "N P"]) -> Float[Tensor, "N P 3"]:
        """Pixel coordinates and camera z depth -> world points."""
        cam = self.pixel_dirs_camera(uv) * depth[..., None]
        return torch.einsum("nij,npj->npi", self.c2w[:, :3, :3], cam) + self.c2w[:, None, :3, 3]


# camera generators ---------------------------------------------------------------------------
def look_at(eyes: Float[Tensor, "N 3"], targets: Float[Tensor, "N 3"] | Float[Tensor, "3"],
            up: Float[Tensor, "3"] | None = None) -> Float[Tensor, "N 4 4"]:
    """OpenCV c2w matrices for cameras at `eyes` looking at `targets` with world `up` (default +z)."""
    eyes = torch.as_tensor(eyes, dtype=torch.float32) if not isinstance(eyes, Tensor) else eyes
    targets = torch.as_tensor(targets).to(eyes).expand_as(eyes)
    up = (torch.tensor([0.0, 0.0, 1.0]) if up is None else torch.as_tensor(up)).to(eyes).expand_as(eyes)
    forward = torch.nn.functional.normalize(targets - eyes, dim=-1)
    right = torch.linalg.cross(forward, up, dim=-1)
    # Looking straight along `up`: pick any perpendicular right vector.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    fallback = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0]).to(eyes).expand_as(eyes), dim=-1)
    right = torch.nn.functional.normalize(torch.where(degenerate, fallback, right), dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    c2w = torch.eye(4).to(eyes).repeat(len(eyes), 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, down, forward, eyes
    return c2w


def spherical_to_cartesian(azimuth: Tensor, elevation: Tensor, radius: Tensor) -> Float[Tensor, "N 3"]:
    """z-up spherical coordinates (radians) -> points [N,3]."""
    return torch.stack([radius * torch.cos(elevation) * torch.cos(azimuth),
                        radius * torch.cos(elevation) * torch.sin(azimuth),
                        radius * torch.sin(elevation)], dim=-1)


def orbit_cameras(n: int, radius: float, elevation_deg: float = 30.0, fov_x_deg: float = 50.0,
                  width: int = 64, height: int = 64, target: tuple[float, float, float] = (0.0, 0.0, 0.0),
                  azimuth_offset_deg: float = 0.0) -> Cameras:
    """n cameras evenly spaced in azimuth on a circle at one elevation, looking at `target`."""
    az = torch.deg2rad(torch.arange(n, dtype=torch.float32) * 360.0 / n + azimuth_offset_deg)
    el = torch.full_like(az, math.radians(elevation_deg))
    tgt = torch.tensor(target, dtype=torch.float32)
    eyes = spherical_to_cartesian(az, el, torch.full_like(az, radius)) + tgt
    return Cameras.from_fov(look_at(eyes, tgt), math.radians(fov_x_deg), width, height)


def random_sphere_cameras(n: int, radius: tuple[float, float] = (3.0, 4.0),
                          elevation_deg: tuple[float, float] = (10.0, 60.0), fov_x_deg: float = 50.0,
                          width: int = 64, height: int = 64,
                          target: tuple[float, float, float] = (0.0, 0.0, 0.0),
                          generator: torch.Generator | None = None) -> Cameras:
    """n cameras at random points of a spherical shell band, uniform in area, looking at `target`."""
    u = torch.rand(n, 3, generator=generator)
    az = u[:, 0] * 2 * math.pi
    lo, hi = (math.sin(math.radians(e)) for e in elevation_deg)
    el = torch.asin(lo + (hi - lo) * u[:, 1])
    r = radius[0] + (radius[1] - radius[0]) * u[:, 2]
    tgt = torch.tensor(target, dtype=torch.float32)
    eyes = spherical_to_cartesian(az, el, r) + tgt
    return Cameras.from_fov(look_at(eyes, tgt), math.radians(fov_x_deg), width, height)


def turntable_cameras(cameras: Cameras, center: Float[Tensor, "3"], n: int) -> Cameras:
    """A turntable: n cameras orbiting `center` at the mean distance and elevation of `cameras` (a
    capture's training views), with their horizontal field of view and image size."""
    offsets = cameras.centers - center
    distance = offsets.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin((offsets[:, 2] / distance).clamp(-1, 1))).mean().item()
    return orbit_cameras(n, distance.mean().item(), elevation, math.degrees(cameras.fov_x[0].item()), cameras.width,
                         cameras.height, target=tuple(center.tolist()))
