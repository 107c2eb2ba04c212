"""TensoRF (Chen et al. 2022), vector-matrix (VM) decomposition: every feature channel is a sum over
the three axis pairs of a plane (matrix) times a line (vector), densities and appearance alike,
with the grid resolution raised during training."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.fields.base import Field, FieldConfig, register_field
from scene3d.fields.encoding import positional_encoding, positional_encoding_dim
from scene3d.fields.grid import voxel_resolution
from scene3d.fields.shared_head import INTERFACE_DIM, LOG_DENSITY_RANGE, SharedHead

# Plane axes and the line axis of the three VM modes (TensoRF's matMode / vecMode).
PLANE_AXES = ((0, 1), (0, 2), (1, 2))
LINE_AXES = (2, 1, 0)


@dataclass
class TensoRFFieldConfig(FieldConfig):
    """Small CPU default; `paper()` is TensoRF-VM-192 on Synthetic-NeRF: 16 density and 48 appearance
    components per mode, 128^3 voxels growing to 300^3 at steps 2000..7000, 27-d appearance basis,
    128-wide render MLP with 2 frequencies for view and features, Adam at 0.02 (grids) / 1e-3.
    density_shift plays the part of TensoRF's softplus shift (-10): components at zero, where the
    L1 term pulls them, are empty space (exp(-5) = 0.007) rather than a haze of density 1."""

    density_components: int = 8
    appearance_components: int = 12
    appearance_dim: int = 27
    resolution_init: int = 32
    resolution_final: int = 96
    upsample_steps: tuple[int, ...] = (300, 600, 900, 1200)
    mlp_width: int = 64
    n_freq_view: int = 2
    n_freq_feature: int = 2
    init_scale: float = 0.1
    density_shift: float = -5.0
    l1_weight: float = 8e-5
    lr: float = 0.02
    lr_basis: float = 1e-3

    @classmethod
    def paper(cls, **overrides: Any) -> TensoRFFieldConfig:
        return cls(**{"density_components": 16, "appearance_components": 48, "resolution_init": 128,
                      "resolution_final": 300, "upsample_steps": (2000, 3000, 4000, 5500, 7000),
                      "mlp_width": 128, **overrides})

    def resolution_schedule(self) -> list[int]:
        """Cube-equivalent resolutions after each upsampling step: voxel counts evenly spaced in log."""
        n = len(self.upsample_steps)
        lo, hi = 3 * math.log(self.resolution_init), 3 * math.log(self.resolution_final)
        return [round(math.exp((lo + (hi - lo) * (i + 1) / n) / 3)) for i in range(n)]


def _vm_factors(n_components: int, res: tuple[int, int, int], scale: float
                ) -> tuple[nn.ParameterList, nn.ParameterList]:
    planes = [scale * torch.randn(1, n_components, res[b], res[a]) for a, b in PLANE_AXES]
    lines = [scale * torch.randn(1, n_components, res[c], 1) for c in LINE_AXES]
    return nn.ParameterList(planes), nn.ParameterList(lines)


def _sample_vm(planes: nn.ParameterList, lines: nn.ParameterList, coords: Float[Tensor, "P 3"]
               ) -> Float[Tensor, "P F"]:
    """Plane x line products of the three modes at coords in [-1, 1]^3, concatenated (F = 3 R)."""
    out = []
    for plane, line, (a, b), c in zip(planes, lines, PLANE_AXES, LINE_AXES, strict=True):
        plane_grid = rearrange(coords[:, [a, b]], "p c -> 1 p 1 c")
        line_xy = torch.stack([torch.zeros_like(coords[:, c]), coords[:, c]], dim=-1)
        line_grid = rearrange(line_xy, "p c -> 1 p 1 c")
        p = F.grid_sample(plane, plane_grid, mode="bilinear", align_corners=True)
        l = F.grid_sample(line, line_grid, mode="bilinear", align_corners=True)  # noqa: E741
        out.append(rearrange(p * l, "1 r p 1 -> p r"))
    return torch.cat(out, dim=-1)


@register_field("tensorf")
class TensoRFField(Field):
    """embed: VM density components (3 R_sigma) and appearance components (3 R_app) at x.
    decode: density = sum of density components; colour = MLP(basis(app), gamma(app), gamma(dir)).
    With `head="pvd"`: the interface is (density sum, a 15-d basis of app), both clipped, and the
    colour PVD's shared color_net. The authors' VM sum has no density_shift: shifted, it would start
    below the clip, where the clamp passes no gradient."""

    Config = TensoRFFieldConfig
    config: TensoRFFieldConfig

    def __init__(self, config: TensoRFFieldConfig):
        super().__init__(config)
        c = config
        res = voxel_resolution(c.resolution_init**3, self.aabb)
        self.density_planes, self.density_lines = _vm_factors(c.density_components, res, c.init_scale)
        self.app_planes, self.app_lines = _vm_factors(c.appearance_components, res, c.init_scale)
        self.head = None
        if c.head == "pvd":  # the authors' VM: a 15-d appearance basis beside the density, PVD's color_net
            self.basis = nn.Linear(3 * c.appearance_components, INTERFACE_DIM - 1, bias=False)
            self.head = SharedHead(None, c.color_dim)
            self.density_bounds = LOG_DENSITY_RANGE
        else:
            self.basis = nn.Linear(3 * c.appearance_components, c.appearance_dim, bias=False)
            in_dim = (positional_encoding_dim(c.appearance_dim, c.n_freq_feature)
                      + positional_encoding_dim(3, c.n_freq_view))
            self.render_mlp = nn.Sequential(nn.Linear(in_dim, c.mlp_width), nn.ReLU(),
                                            nn.Linear(c.mlp_width, c.mlp_width), nn.ReLU(),
                                            nn.Linear(c.mlp_width, c.color_dim))

    @property
    def resolution(self) -> tuple[int, int, int]:
        """Current grid size (x, y, z)."""
        _, _, ry, rx = self.density_planes[0].shape
        return rx, ry, self.density_planes[1].shape[2]

    def _grids(self) -> list[nn.ParameterList]:
        return [self.density_planes, self.density_lines, self.app_planes, self.app_lines]

    def embed(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B F"]:
        batch = x.shape[:-1]
        coords = (self.normalize(x) * 2 - 1).reshape(-1, 3)
        features = torch.cat([_sample_vm(self.density_planes, self.density_lines, coords),
                              _sample_vm(self.app_planes, self.app_lines, coords)], dim=-1)
        return features.reshape(*batch, features.shape[-1])

    def _code(self, features: Float[Tensor, "*B F"]) -> Float[Tensor, "*B 16"]:
        """PVD's 16 values: the density sum (no shift, as the authors') and the 15-d appearance basis."""
        split = 3 * self.config.density_components
        return torch.cat([features[..., :split].sum(dim=-1, keepdim=True), self.basis(features[..., split:])], dim=-1)

    def interface(self, features: Float[Tensor, "*B F"]) -> Float[Tensor, "*B 16"] | None:
        return None if self.head is None else self.head.interface(self._code(features))

    def decode_density(self, features: Float[Tensor, "*B F"]) -> Float[Tensor, "*B"]:
        density = features[..., : 3 * self.config.density_components].sum(dim=-1)
        return density if self.head is not None else density + self.config.density_shift

    def decode(self, features: Float[Tensor, "*B F"], dirs: Float[Tensor, "*B 3"]
               ) -> tuple[Float[Tensor, "*B"], Float[Tensor, "*B C"]]:
        if self.head is not None:
            return self.head.decode(self._code(features), dirs)
        c = self.config
        app = self.basis(features[..., 3 * c.density_components:])
        inputs = torch.cat([positional_encoding(app, c.n_freq_feature),
                            positional_encoding(dirs, c.n_freq_view)], dim=-1)
        return self.decode_density(features), torch.sigmoid(self.render_mlp(inputs))

    # training -----------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        grids = [p for group in self._grids() for p in group]
        grid_ids = {id(p) for p in grids}
        mlp = [p for p in self.parameters() if id(p) not in grid_ids]
        return [{"params": grids, "lr": self.config.lr}, {"params": mlp, "lr": self.config.lr_basis}]

    def regularization(self) -> Tensor:
        l1 = sum(p.abs().mean() for group in (self.density_planes, self.density_lines) for p in group)
        return self.config.l1_weight * l1 + self.sparsity_loss()

    def on_train_step(self, step: int) -> bool:
        if step not in self.config.upsample_steps:
            return False
        target = self.config.resolution_schedule()[self.config.upsample_steps.index(step)]
        self.upsample(voxel_resolution(target**3, self.aabb))
        return True

    @torch.no_grad()
    def upsample(self, res: tuple[int, int, int]) -> None:
        """Resample every plane and line to grid size res (x, y, z), bilinearly (TensoRF's upsampling)."""
        for planes, lines in ((self.density_planes, self.density_lines), (self.app_planes, self.app_lines)):
            for i, ((a, b), c) in enumerate(zip(PLANE_AXES, LINE_AXES, strict=True)):
                planes[i] = nn.Parameter(F.interpolate(planes[i].data, size=(res[b], res[a]), mode="bilinear",
                                                       align_corners=True))
                lines[i] = nn.Parameter(F.interpolate(lines[i].data, size=(res[c], 1), mode="bilinear",
                                                      align_corners=True))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Accepts states at any grid resolution (a checkpoint taken after upsampling)."""
        names = ("density_planes", "density_lines", "app_planes", "app_lines")
        for prefix, group in zip(names, self._grids(), strict=True):
            for i, param in enumerate(group):
                incoming = state_dict.get(f"{prefix}.{i}")
                if incoming is not None and incoming.shape != param.shape:
                    group[i] = nn.Parameter(incoming.new_empty(incoming.shape).to(param))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
