"""Scene normalisation of a capture, as nerfstudio's dataparser (`auto_orient_and_center_poses`, `auto_scale_poses`).

orientation "up": the mean camera up vector (minus the OpenCV y axis) is turned onto +z by the smallest rotation;
"pca": the principal axes of the camera centres become x, y, z (z the smallest), flipped so cameras are upright;
"none". centre "poses": the mean camera centre goes to the origin; "focus": the point nearest every active
optical axis (nerfstudio's `focus_of_attention`); "none". auto_scale: the largest camera coordinate becomes 1,
so the cameras fit the unit box [-1, 1]^3, which is the scene box unless the file gave one (then its corners'
bounding box in the new frame). The dataset keeps the transform (`MultiViewDataset.frame`) and every export
inverts it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from scene3d.data.dataset import MultiViewDataset
from scene3d.data.frame import SceneTransform
from scene3d.errors import DataError


@dataclass
class Normalization:
    """How a loaded capture is normalised (nerfstudio's defaults: up, poses, auto scale)."""

    orientation: Literal["up", "pca", "none"] = "up"
    center: Literal["poses", "focus", "none"] = "poses"
    auto_scale: bool = True
    scale_factor: float = 1.0  # extra factor on top of the auto scale (nerfstudio's scale_factor)


def rotation_between(a: Float[Tensor, "3"], b: Float[Tensor, "3"]) -> Float[Tensor, "3 3"]:
    """The smallest rotation taking direction a onto direction b (Rodrigues; a half turn about an axis
    perpendicular to a when they are opposite)."""
    a, b = a / a.norm(), b / b.norm()
    v, c = torch.linalg.cross(a, b), torch.dot(a, b)
    if c < -1 + 1e-6:
        axis = torch.linalg.cross(a, torch.eye(3, dtype=a.dtype)[int(torch.argmin(a.abs()))])
        axis = axis / axis.norm()
        return 2 * torch.outer(axis, axis) - torch.eye(3, dtype=a.dtype)
    skew = torch.tensor([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], dtype=a.dtype)
    return torch.eye(3, dtype=a.dtype) + skew + skew @ skew / (1 + c)


def focus_of_attention(c2w: Float[Tensor, "N 4 4"], initial: Float[Tensor, "3"]) -> Float[Tensor, "3"]:
    """The point nearest the optical axes of the cameras that see it in front (nerfstudio's iteration)."""
    dirs, origins = c2w[:, :3, 2:3], c2w[:, :3, 3:4]  # OpenCV forward = +z
    focus = initial
    active = ((focus - origins[..., 0]) * dirs[..., 0]).sum(-1) > 0
    done = False
    while int(active.sum()) > 1 and not done:
        dirs, origins = dirs[active], origins[active]
        m = torch.eye(3, dtype=c2w.dtype) - dirs * dirs.transpose(-2, -1)
        mt_m = m.transpose(-2, -1) @ m
        focus = torch.linalg.inv(mt_m.mean(0)) @ (mt_m @ origins).mean(0)[:, 0]
        active = ((focus - origins[..., 0]) * dirs[..., 0]).sum(-1) > 0
        done = bool(active.all())
    return focus


def camera_up(c2w: Float[Tensor, "N 4 4"], min_norm: float = 1e-6) -> Float[Tensor, "3"] | None:
    """The world's up as the cameras see it: the mean of their up axes (minus the OpenCV y axis), unit length;
    None when those cancel out (cameras in every orientation)."""
    up = -c2w[:, :3, 1].double().mean(0)
    return None if up.norm() < min_norm else up / up.norm()


def fit_normalization(c2w: Float[Tensor, "N 4 4"], config: Normalization, source: Any = None) -> SceneTransform:
    """The transform that orients, centres and scales poses `c2w` (OpenCV axes) as `config` says (`source`:
    the capture, named by errors)."""
    c2w = c2w.double()
    origins = c2w[:, :3, 3]
    mean = origins.mean(0)
    if config.center == "poses":
        center = mean
    elif config.center == "focus":
        center = focus_of_attention(c2w, mean)
    elif config.center == "none":
        center = torch.zeros(3, dtype=c2w.dtype)
    else:
        raise DataError(source, "normalize.center", f"must be poses, focus or none, got {config.center!r}")
    if config.orientation == "pca":
        diff = origins - mean
        _, eigvec = torch.linalg.eigh(diff.T @ diff)
        rot = torch.flip(eigvec, dims=(-1,)).T  # rows: principal axes, largest first
        if torch.linalg.det(rot) < 0:
            rot[2] = -rot[2]
        if (rot @ c2w[:, :3, 1].mean(0))[2] > 0:  # cameras upside down (their down axis points up): half turn
            rot[1:3] = -rot[1:3]
    elif config.orientation == "up":
        up = camera_up(c2w)
        if up is None:
            raise DataError(source, "normalize.orientation", "the cameras' up vectors cancel out; use 'pca' or 'none'")
        rot = rotation_between(up, torch.tensor([0.0, 0.0, 1.0], dtype=c2w.dtype))
    elif config.orientation == "none":
        rot = torch.eye(3, dtype=c2w.dtype)
    else:
        raise DataError(source, "normalize.orientation", f"must be up, pca or none, got {config.orientation!r}")
    transform = torch.cat([rot, (rot @ -center)[:, None]], dim=1)
    scale = config.scale_factor
    if config.auto_scale:
        moved = origins @ rot.T + transform[:, 3]
        scale /= max(float(moved.abs().max()), 1e-12)
    return SceneTransform(transform.float(), float(scale))


def box_in_frame(aabb: Float[Tensor, "2 3"], frame: SceneTransform) -> Float[Tensor, "2 3"]:
    """The axis-aligned box around `aabb`'s eight corners in the working frame."""
    corners = torch.stack(torch.meshgrid(*aabb.T, indexing="ij"), -1).reshape(-1, 3)
    moved = frame.points(corners)
    return torch.stack([moved.amin(0), moved.amax(0)])


def apply_frame(ds: MultiViewDataset, frame: SceneTransform, aabb: Tensor | None = None) -> MultiViewDataset:
    """`ds` moved by `frame` (poses, points, world normals, camera-z depths, box); `aabb` overrides the box."""
    cameras = ds.cameras.with_c2w(frame.c2w(ds.cameras.c2w))
    out = {"cameras": cameras, "frame": frame, "aabb": box_in_frame(ds.aabb, frame) if aabb is None else aabb}
    if ds.points is not None:
        out["points"] = frame.points(ds.points)
    if ds.normals is not None:
        out["normals"] = ds.normals @ frame.rotation.T.to(ds.normals)
    if ds.depths is not None:
        out["depths"] = ds.depths * frame.scale
    return replace(ds, **out)


def normalize_dataset(ds: MultiViewDataset, config: Normalization | None = None,
                      poses: Float[Tensor, "M 4 4"] | None = None, has_box: bool = False,
                      source: Any = None) -> MultiViewDataset:
    """`ds` in the frame fitted to `poses` (default its own; a loader passes every pose of the capture so all
    splits share one frame). The box is the unit box times `scale_factor`, or the file's (`has_box`) moved."""
    config = config or Normalization()
    frame = fit_normalization(ds.cameras.c2w if poses is None else poses, config, source)
    half = config.scale_factor
    return apply_frame(ds, frame, None if has_box else torch.tensor([[-half] * 3, [half] * 3]))


def to_original(ds: MultiViewDataset) -> MultiViewDataset:
    """`ds` back in its capture's original frame (unchanged when it has no `frame`)."""
    if ds.frame is None:
        return ds
    return replace(apply_frame(ds, ds.frame.inverse()), frame=None)
