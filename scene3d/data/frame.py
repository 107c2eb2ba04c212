"""A similarity transform between a capture's original world frame and the frame the library works in.

Stored as nerfstudio's `dataparser_transforms.json`: `transform` [3,4] = [R | t] and `scale` s, so a point
x of the original frame is s * (R x + t) in the working frame. Poses (c2w, OpenCV axes) map alike:
rotation R @ R_c2w, centre s * (R c + t).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from scene3d.checkpoint import atomic_write_json


@dataclass
class SceneTransform:
    """x_working = scale * (transform[:, :3] @ x_original + transform[:, 3])."""

    transform: Float[Tensor, "3 4"] = field(default_factory=lambda: torch.eye(4)[:3])
    scale: float = 1.0

    @property
    def rotation(self) -> Float[Tensor, "3 3"]:
        return self.transform[:, :3]

    @property
    def translation(self) -> Float[Tensor, "3"]:
        return self.transform[:, 3]

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and torch.equal(self.transform, torch.eye(4)[:3].to(self.transform))

    def points(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B 3"]:
        """Original frame -> working frame."""
        return self.scale * (x @ self.rotation.T.to(x) + self.translation.to(x))

    def points_back(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B 3"]:
        """Working frame -> original frame."""
        return (x / self.scale - self.translation.to(x)) @ self.rotation.to(x)

    def c2w(self, c2w: Float[Tensor, "N 4 4"]) -> Float[Tensor, "N 4 4"]:
        """Camera poses, original frame -> working frame."""
        out = c2w.clone()
        out[:, :3, :3] = self.rotation.to(c2w) @ c2w[:, :3, :3]
        out[:, :3, 3] = self.points(c2w[:, :3, 3])
        return out

    def c2w_back(self, c2w: Float[Tensor, "N 4 4"]) -> Float[Tensor, "N 4 4"]:
        """Camera poses, working frame -> original frame."""
        out = c2w.clone()
        out[:, :3, :3] = self.rotation.T.to(c2w) @ c2w[:, :3, :3]
        out[:, :3, 3] = self.points_back(c2w[:, :3, 3])
        return out

    def inverse(self) -> SceneTransform:
        """The transform back: x = (1 / s) (R^T x' - s R^T t)."""
        rot_t = self.rotation.T
        return SceneTransform(torch.cat([rot_t, -self.scale * (rot_t @ self.translation)[:, None]], 1), 1 / self.scale)

    def matrix_back(self) -> Float[Tensor, "4 4"]:
        """The 4x4 similarity working -> original (for meshes and other tools)."""
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = self.rotation.T.double() / self.scale
        m[:3, 3] = -(self.rotation.T.double() @ self.translation.double())
        return m

    def to_json(self) -> dict[str, Any]:
        """nerfstudio's dataparser_transforms.json."""
        return {"transform": self.transform.tolist(), "scale": float(self.scale)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SceneTransform:
        return cls(torch.tensor(obj["transform"], dtype=torch.float32), float(obj["scale"]))


def write_frame(path: str | Path, frame: SceneTransform | None) -> Path:
    """A run's `dataparser_transforms.json` (the identity when the data was used in its own frame)."""
    return atomic_write_json(path, (frame or SceneTransform()).to_json())
