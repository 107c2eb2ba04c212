"""Render any Field along rays or from cameras: AABB clipping, stratified samples, optional
occupancy-grid skipping, compositing of colour (or N-d features), opacity and depth."""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from jaxtyping import Float
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.rays import Rays, stratified_samples
from scene3d.render.occupancy import OccupancyGrid
from scene3d.render.volume import accumulate, blend_background, composite, compute_weights, expected_distance

Background = Float[Tensor, "C"] | Float[Tensor, "R C"] | str | None


def resolve_background(background: Background, n_rays: int, channels: int, device: torch.device,
                       generator: torch.Generator | None = None) -> Float[Tensor, "R C"]:
    """None -> zeros; "random" -> uniform per ray; a [C] or [R,C] tensor -> broadcast to [R,C]."""
    if background is None:
        return torch.zeros(n_rays, channels, device=device)
    if isinstance(background, str):
        if background != "random":
            raise ValueError(f"background must be a tensor, None or 'random', got '{background}'")
        return torch.rand(n_rays, channels, generator=generator, device=device)
    return torch.as_tensor(background, dtype=torch.float32, device=device).expand(n_rays, channels)


def render_rays(field, rays: Rays, n_samples: int = 64, *, perturb: bool = False,
                background: Background = None, occupancy: OccupancyGrid | None = None,
                z_axis: Float[Tensor, "R 3"] | None = None, generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:
    """Volume-render a batch of rays [R] through `field` (any registered architecture).

    Samples are stratified in the part of each ray inside the field's box (jittered when
    `perturb`). With an `occupancy` grid only samples in occupied cells are sent to the field; the
    others count as empty. Returns rgb [R,C] (C = field.config.color_dim, so N-d features too),
    accumulation [R], t_depth [R] (expected ray distance), depth [R] (camera z, when `z_axis`, the
    optical axis per ray, is given), background [R,C], and the per-sample weights and t [R,S].
    """
    rays = rays.flatten()
    n_rays = len(rays)
    clipped, hit = rays.clip_to_aabb(field.aabb)
    samples = stratified_samples(clipped.near, clipped.far, n_samples, perturb=perturb, generator=generator)
    points = clipped.at(samples.t)                                               # [R,S,3]
    dirs = repeat(rays.dirs, "r c -> r s c", s=n_samples)
    channels = field.config.color_dim
    if occupancy is None:
        sigmas, colors = field.query(points, dirs)
    else:
        keep = (hit[:, None] & occupancy.occupied(points)).flatten().nonzero()[:, 0]
        sigma_kept, color_kept = field.query(points.reshape(-1, 3)[keep], dirs.reshape(-1, 3)[keep])
        sigmas = points.new_zeros(n_rays * n_samples).index_copy(0, keep, sigma_kept.to(points))
        colors = points.new_zeros(n_rays * n_samples, channels).index_copy(0, keep, color_kept.to(points))
        sigmas = rearrange(sigmas, "(r s) -> r s", r=n_rays)
        colors = rearrange(colors, "(r s) c -> r s c", r=n_rays)
    weights, _ = compute_weights(sigmas, samples.deltas)
    acc = accumulate(weights)
    bg = resolve_background(background, n_rays, channels, points.device, generator)
    out = {"rgb": blend_background(composite(weights, colors), acc, bg), "accumulation": acc,
           "t_depth": expected_distance(weights, samples.t), "background": bg, "weights": weights,
           "t": samples.t}
    if z_axis is not None:
        out["depth"] = out["t_depth"] * (rays.dirs * z_axis).sum(dim=-1)
    return out


@torch.no_grad()
def render_image(field, cameras: Cameras, n_samples: int = 64, *, chunk: int = 8192,
                 background: Background = None, occupancy: OccupancyGrid | None = None
                 ) -> dict[str, Tensor]:
    """Render every pixel of every camera in chunks of rays (no gradients).

    Returns rgb [N,H,W,C], accumulation, depth (camera z) and t_depth (ray distance) [N,H,W]."""
    rays = cameras.rays().flatten()
    z_axis = repeat(cameras.forward, "n c -> (n p) c", p=cameras.height * cameras.width)
    keys = ("rgb", "accumulation", "depth", "t_depth")
    parts: dict[str, list[Tensor]] = {k: [] for k in keys}
    for start in range(0, len(rays), chunk):
        sl = slice(start, start + chunk)
        out = render_rays(field, rays[sl], n_samples, background=background, occupancy=occupancy,
                          z_axis=z_axis[sl])
        for k in keys:
            parts[k].append(out[k])
    n, h, w = len(cameras), cameras.height, cameras.width
    return {k: rearrange(torch.cat(v), "(n h w) ... -> n h w ...", n=n, h=h, w=w) for k, v in parts.items()}
