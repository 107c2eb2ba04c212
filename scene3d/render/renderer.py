"""Render any Field along rays or from cameras: AABB clipping, stratified samples, optional
occupancy-grid skipping, compositing of colour (or N-d features), opacity and depth."""

from __future__ import annotations

import math

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


def query_skipping(field, points: Float[Tensor, "R S 3"], dirs: Float[Tensor, "R S 3"],
                   deltas: Float[Tensor, "R S"], candidates: Float[Tensor, "R S"], min_transmittance: float = 0.0,
                   segment: int = 16) -> tuple[Float[Tensor, "R S"], Float[Tensor, "R S C"]]:
    """Query the field only at `candidates` (bool [R,S]: samples that may hold density); every
    other sample counts as empty (density 0, colour 0). With `min_transmittance` > 0 the samples
    are visited front to back in segments of `segment`, and a ray stops once its transmittance
    falls below it (Instant-NGP's early termination: what lies behind changes the pixel by less
    than `min_transmittance`)."""
    n_rays, n_samples, _ = points.shape
    step = segment if min_transmittance > 0 else n_samples
    max_depth = -math.log(min_transmittance) if min_transmittance > 0 else math.inf
    optical_depth = points.new_zeros(n_rays)
    sigma_parts, color_parts = [], []
    for start in range(0, n_samples, step):
        sl = slice(start, start + step)
        keep = candidates[:, sl] & (optical_depth < max_depth)[:, None]               # [R,s]
        flat = keep.flatten().nonzero()[:, 0]
        sigma_kept, color_kept = field.query(points[:, sl].reshape(-1, 3)[flat], dirs[:, sl].reshape(-1, 3)[flat])
        n = keep.numel()
        sigma = points.new_zeros(n).index_copy(0, flat, sigma_kept.to(points)).view(keep.shape)
        color = points.new_zeros(n, field.config.color_dim).index_copy(0, flat, color_kept.to(points))
        sigma_parts.append(sigma)
        color_parts.append(color.view(*keep.shape, -1))
        optical_depth = optical_depth + (sigma * deltas[:, sl]).sum(-1).detach()
    return torch.cat(sigma_parts, 1), torch.cat(color_parts, 1)


def render_rays(field, rays: Rays, n_samples: int = 64, *, perturb: bool = False,
                background: Background = None, occupancy: OccupancyGrid | None = None,
                min_transmittance: float = 0.0, z_axis: Float[Tensor, "R 3"] | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Volume-render a batch of rays [R] through `field` (any registered architecture).

    Samples are stratified in the part of each ray inside the field's box (jittered when
    `perturb`). With an `occupancy` grid only samples in occupied cells are sent to the field; the
    others count as empty. With `min_transmittance` > 0, rays stop early once nearly opaque (see
    `query_skipping`). Returns rgb [R,C] (C = field.config.color_dim, so N-d features too),
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
    if occupancy is None and min_transmittance <= 0:
        sigmas, colors = field.query(points, dirs)
    else:
        candidates = hit[:, None].expand(-1, n_samples)
        if occupancy is not None:
            candidates = candidates & occupancy.occupied(points)
        sigmas, colors = query_skipping(field, points, dirs, samples.deltas, candidates, min_transmittance)
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
                 background: Background = None, occupancy: OccupancyGrid | None = None,
                 min_transmittance: float = 1e-4) -> dict[str, Tensor]:
    """Render every pixel of every camera in chunks of rays (no gradients). Given an `occupancy`
    grid, empty cells are skipped and rays stop once their transmittance is below
    `min_transmittance`; without one, every sample is queried (the reference path).

    Returns rgb [N,H,W,C], accumulation, depth (camera z) and t_depth (ray distance) [N,H,W]."""
    rays = cameras.rays().flatten()
    z_axis = repeat(cameras.forward, "n c -> (n p) c", p=cameras.height * cameras.width)
    keys = ("rgb", "accumulation", "depth", "t_depth")
    parts: dict[str, list[Tensor]] = {k: [] for k in keys}
    for start in range(0, len(rays), chunk):
        sl = slice(start, start + chunk)
        out = render_rays(field, rays[sl], n_samples, background=background, occupancy=occupancy,
                          min_transmittance=min_transmittance if occupancy is not None else 0.0, z_axis=z_axis[sl])
        for k in keys:
            parts[k].append(out[k])
    n, h, w = len(cameras), cameras.height, cameras.width
    return {k: rearrange(torch.cat(v), "(n h w) ... -> n h w ...", n=n, h=h, w=w) for k, v in parts.items()}
