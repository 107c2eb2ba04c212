"""A step-through rollout of an active-vision model (`avfm.CanViT`) on one image, as plain Python.

`GlimpseSession` keeps the recurrent state after every step, so stepping back is free and a
glimpse placed by hand (`place`) continues from the state shown. Per step it gives the glimpse,
the canvas as a PCA picture, and the error of the canvas's teacher prediction against the
teacher's own (standardised) patch embeddings of the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from avfm.glimpse import Viewpoint, build_policy, extract_glimpse
from avfm.model import CanViT, State
from scene3d.viz import pca_rgb

# Policies that need no probe feedback (EG-C2F without a probe would pick at random).
VIEWER_POLICIES = ("c2f", "f2c", "random", "full_first", "repeated_full")


@dataclass
class GlimpseStep:
    viewpoint: Viewpoint  # batch of one
    glimpse: Float[Tensor, "3 P P"]
    state: State
    error: float | None  # MSE of standardised patch predictions vs teacher targets
    prediction: Float[Tensor, "G2 Dt"]  # the canvas head's teacher features, destandardised


def box_pixels(viewpoint: Viewpoint, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pixel bounds of a glimpse: centre (y, x) in [-1, 1], half-side scale."""
    (y, x), s = viewpoint.center[0].tolist(), float(viewpoint.scale[0])
    top, bottom = round((y - s + 1) / 2 * height), round((y + s + 1) / 2 * height)
    left, right = round((x - s + 1) / 2 * width), round((x + s + 1) / 2 * width)
    return max(top, 0), max(left, 0), min(bottom, height), min(right, width)


def draw_boxes(image: Float[Tensor, "H W 3"], viewpoints: list[Viewpoint], thickness: int = 1) -> Tensor:
    """The image with each glimpse's outline: earlier ones white, the latest red."""
    out = image.clone()
    h, w = image.shape[:2]
    for i, vp in enumerate(viewpoints):
        color = torch.tensor([1.0, 0.1, 0.1]) if i == len(viewpoints) - 1 else torch.ones(3)
        t, left, b, r = box_pixels(vp, h, w)
        k = thickness
        out[t : t + k, left:r] = color
        out[max(b - k, 0) : b, left:r] = color
        out[t:b, left : left + k] = color
        out[t:b, max(r - k, 0) : r] = color
    return out


def grid_image(tokens: Float[Tensor, "G2 D"], size: int) -> Float[Tensor, "size size 3"]:
    """A square token grid as PCA colours, upsampled (nearest) to size x size."""
    g = int(round(tokens.shape[0] ** 0.5))
    rgb = pca_rgb(rearrange(tokens.float(), "(h w) d -> h w d", h=g))
    return rearrange(F.interpolate(rearrange(rgb, "h w c -> 1 c h w"), size=(size, size), mode="nearest"),
                     "1 c h w -> h w c")


class GlimpseSession:
    """One image, one model, a policy; `step` / `back` / `place` move through the rollout."""

    def __init__(self, model: CanViT, image: Float[Tensor, "3 H W"], targets: Tensor | None = None,
                 policy: str = "c2f", max_steps: int = 16, seed: int = 0):
        self.model = model.eval()
        self.image = image.float()
        self.grid = model.cfg.canvas_grid
        self.max_steps, self.seed = max_steps, seed
        # teacher patch embeddings [G2, Dt] resampled to the canvas grid, standardised like the heads
        std = model.standardizer(self.grid)
        self.targets = None if targets is None else (targets.float() - std.patch_mean) / std.patch_scale
        self.reset(policy)

    def reset(self, policy: str | None = None) -> None:
        """Start over (optionally with another policy)."""
        self.policy = policy or self.policy
        self._run = build_policy(self.policy).start(1, self.max_steps, torch.Generator().manual_seed(self.seed))
        self._planned: list[Viewpoint] = []  # the policy's viewpoints so far, kept across `back`
        self.steps: list[GlimpseStep] = []

    @property
    def state(self) -> State:
        return self.steps[-1].state if self.steps else self.model.init_state(1, self.grid)

    @torch.no_grad()
    def step(self, viewpoint: Viewpoint | None = None) -> GlimpseStep | None:
        """Take the policy's next glimpse (or `viewpoint`); None when the policy has run out."""
        if viewpoint is None:
            i = len(self.steps)
            while len(self._planned) <= i:
                try:
                    self._planned.append(self._run.next())
                except IndexError:
                    return None
            viewpoint = self._planned[i]
        glimpse = extract_glimpse(self.image[None], viewpoint, self.model.cfg.glimpse_px)  # shown as it is
        state, out = self.model.step(self.model.glimpse(self.image[None], viewpoint), viewpoint, self.state, heads=True)
        error = None
        if self.targets is not None and out.scene_patches is not None:
            error = float(F.mse_loss(out.scene_patches[0].float(), self.targets))
        prediction = self.model.destandardize(out.scene_patches, out.scene_cls)[0][0]
        self.steps.append(GlimpseStep(viewpoint, glimpse[0], state, error, prediction))
        return self.steps[-1]

    def place(self, y: float, x: float, scale: float) -> GlimpseStep:
        """A glimpse chosen by hand: centre (y, x) in [-1, 1], half-side `scale` in (0, 1]."""
        scale = min(max(scale, 1e-3), 1.0)
        return self.step(Viewpoint.make(max(-1.0, min(1.0, y)), max(-1.0, min(1.0, x)), scale))

    def back(self) -> None:
        if self.steps:
            self.steps.pop()

    # pictures ----------------------------------------------------------------------------------
    def scene_with_boxes(self) -> Float[Tensor, "H W 3"]:
        return draw_boxes(rearrange(self.image, "c h w -> h w c"), [s.viewpoint for s in self.steps])

    @torch.no_grad()
    def canvas_pca(self, size: int = 128) -> Float[Tensor, "size size 3"]:
        return grid_image(self.model.canvas_cells(self.state)[0], size)

    def prediction_pca(self, size: int = 128) -> Float[Tensor, "size size 3"] | None:
        """The latest step's predicted teacher features (None before the first step)."""
        return grid_image(self.steps[-1].prediction, size) if self.steps else None

    def teacher_pca(self, size: int = 128) -> Float[Tensor, "size size 3"] | None:
        return None if self.targets is None else grid_image(self.targets, size)

    def last_glimpse(self, size: int = 128) -> Float[Tensor, "size size 3"]:
        if not self.steps:
            return torch.zeros(size, size, 3)
        g = F.interpolate(self.steps[-1].glimpse[None], size=(size, size), mode="bilinear", align_corners=False)
        return rearrange(g[0].clamp(0, 1), "c h w -> h w c")
