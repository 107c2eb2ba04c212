"""Adaptive density control of 3DGS (Kerbl et al. 2023, Sec. 5) as a strategy dataclass.

Every `refine_every` steps between `refine_start` and `refine_stop`: Gaussians whose mean
screen-space gradient (in NDC units, as the paper) exceeds `grow_grad2d` are cloned when small
(max scale <= `grow_scale3d` x scene extent) or split into two samples with scales / 1.6 when large;
then Gaussians with opacity < `prune_opacity`, or (after the first reset) a world size >
`prune_scale3d` x extent or a screen radius > `prune_screen_size` pixels, are removed. Every
`reset_every` steps opacities are reset to at most 2 x `prune_opacity`. Defaults are the paper's.
Optimizer state (Adam moments) is carried along: copied for clones, zeroed for new Gaussians.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor

from scene3d.config import Range
from scene3d.gaussians.rasterize import RenderOutput
from scene3d.gaussians.scene import GaussianScene
from scene3d.rotations import quat_to_rotmat


@dataclass
class DensifyStrategy:
    prune_opacity: Annotated[float, Range(0, 1)] = 0.005
    grow_grad2d: Annotated[float, Range(0)] = 0.0002
    grow_scale3d: Annotated[float, Range(0)] = 0.01
    prune_scale3d: Annotated[float, Range(0)] = 0.1
    prune_screen_size: Annotated[float, Range(0)] = 20.0
    refine_start: Annotated[int, Range(0)] = 500
    refine_stop: Annotated[int, Range(0)] = 15_000
    refine_every: Annotated[int, Range(1)] = 100
    reset_every: Annotated[int, Range(1)] = 3000
    split_shrink: Annotated[float, Range(0, above=True)] = 1.6
    max_gaussians: Annotated[int, Range(1)] = 3_000_000


class DensityController:
    """Runs a `DensifyStrategy` on one scene and its (single, per-parameter-group) optimizer."""

    def __init__(self, config: DensifyStrategy, scene: GaussianScene, optimizer: torch.optim.Optimizer,
                 scene_extent: float):
        self.cfg, self.scene, self.opt, self.extent = config, scene, optimizer, scene_extent
        self.reset_stats()

    def reset_stats(self) -> None:
        n, dev = len(self.scene), self.scene.means.device
        self.grad2d = torch.zeros(n, device=dev)
        self.count = torch.zeros(n, device=dev)
        self.max_radii = torch.zeros(n, device=dev)

    def state_dict(self) -> dict[str, Tensor]:
        return {"grad2d": self.grad2d, "count": self.count, "max_radii": self.max_radii}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.grad2d, self.count, self.max_radii = state["grad2d"], state["count"], state["max_radii"]

    @staticmethod
    def before_backward(out: RenderOutput) -> None:
        """Keep the screen-mean gradient (needed for the growth criterion)."""
        if out.means2d.requires_grad:
            out.means2d.retain_grad()

    @torch.no_grad()
    def after_backward(self, step: int, out: RenderOutput) -> dict[str, int]:
        """Accumulate statistics, then refine / reset when due. Returns counts of what changed."""
        cfg = self.cfg
        if step < cfg.refine_stop and out.means2d.grad is not None:
            c, h, w = out.colors.shape[:3]
            g = out.means2d.grad.clone()
            g[..., 0] *= w / 2.0 * c
            g[..., 1] *= h / 2.0 * c
            visible = (out.radii > 0).all(-1)  # [C, N]
            self.grad2d += (g.norm(dim=-1) * visible).sum(0)
            self.count += visible.sum(0).float()
            radius = out.radii.max(-1).values.float()  # pixels
            self.max_radii = torch.maximum(self.max_radii, radius.max(0).values)
        info = {}
        if cfg.refine_start < step < cfg.refine_stop and step % cfg.refine_every == 0:
            info = self.refine(step)
        if step < cfg.refine_stop and step > 0 and step % cfg.reset_every == 0:
            self.reset_opacity()
            info["reset"] = 1
        return info

    def refine(self, step: int) -> dict[str, int]:
        cfg, s = self.cfg, self.scene
        avg = self.grad2d / self.count.clamp_min(1)
        high = avg > cfg.grow_grad2d
        small = s.scales.max(-1).values <= cfg.grow_scale3d * self.extent
        room = cfg.max_gaussians - len(s)
        clone, split = high & small, high & ~small
        if int(clone.sum() + split.sum()) > room:  # over budget: grow nothing this time
            clone, split = torch.zeros_like(high), torch.zeros_like(high)
        n_clone, n_split = int(clone.sum()), int(split.sum())
        self._clone(clone)
        self._split(torch.cat([split, split.new_zeros(n_clone)]))
        prune = s.opacities < cfg.prune_opacity
        if step > cfg.reset_every:
            prune |= s.scales.max(-1).values > cfg.prune_scale3d * self.extent
            prune |= self.max_radii > cfg.prune_screen_size
        n_prune = int(prune.sum())
        self._select(~prune)
        self.reset_stats()
        return {"clone": n_clone, "split": n_split, "prune": n_prune}

    # parameter surgery ---------------------------------------------------------------------
    def _update(self, param_fn: Callable[[str, Tensor], Tensor], state_fn: Callable[[Tensor], Tensor],
                stats_fn: Callable[[Tensor], Tensor] | None = None) -> None:
        """Replace every parameter by param_fn(name, p), every per-row optimizer state by state_fn and
        the per-Gaussian statistics by stats_fn."""
        if stats_fn is not None:
            self.grad2d, self.count, self.max_radii = (stats_fn(v) for v in (self.grad2d, self.count, self.max_radii))
        for group in self.opt.param_groups:
            old = group["params"][0]
            name = group["name"]
            new = torch.nn.Parameter(param_fn(name, old.detach()))
            state = self.opt.state.pop(old, {})
            self.opt.state[new] = {k: state_fn(v) if torch.is_tensor(v) and v.ndim > 0 and len(v) == len(old)
                                   else v for k, v in state.items()}
            group["params"][0] = new
            self.scene.params[name] = new

    def _clone(self, mask: Tensor) -> None:
        idx = torch.nonzero(mask).squeeze(1)
        self._update(lambda _, p: torch.cat([p, p[idx]]), lambda v: torch.cat([v, torch.zeros_like(v[idx])]),
                     lambda v: torch.cat([v, v[idx]]))

    def _split(self, mask: Tensor) -> None:
        idx = torch.nonzero(mask).squeeze(1)
        if len(idx) == 0:
            return
        s = self.scene
        scales, rot = s.scales[idx], quat_to_rotmat(s.quats[idx])
        samples = torch.einsum("nij,bnj->bni", rot, scales * torch.randn(2, len(idx), 3, device=scales.device))
        new_means = (s.means[idx][None] + samples).flatten(0, 1)
        new_log_scales = torch.log(scales / self.cfg.split_shrink).repeat(2, 1)
        keep = torch.nonzero(~mask).squeeze(1)

        def param_fn(name: str, p: Tensor) -> Tensor:
            if name == "means":
                child = new_means
            elif name == "log_scales":
                child = new_log_scales
            else:
                child = p[idx].repeat(2, *([1] * (p.ndim - 1)))
            return torch.cat([p[keep], child])

        def zeros_for_children(v: Tensor) -> Tensor:
            return torch.cat([v[keep], torch.zeros_like(v[idx]).repeat(2, *([1] * (v.ndim - 1)))])

        self._update(param_fn, zeros_for_children, lambda v: torch.cat([v[keep], v[idx].repeat(2)]))

    def _select(self, keep: Tensor) -> None:
        self._update(lambda _, p: p[keep], lambda v: v[keep], lambda v: v[keep])

    def reset_opacity(self) -> None:
        cap = torch.logit(torch.tensor(2 * self.cfg.prune_opacity)).item()
        logits = self.scene.params["opacity_logits"]
        logits.data.clamp_(max=cap)
        for v in self.opt.state.get(logits, {}).values():  # fresh Adam moments for the reset opacities
            if torch.is_tensor(v) and v.ndim > 0:
                v.zero_()
