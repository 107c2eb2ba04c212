"""NeRF (Mildenhall et al. 2020): an MLP over positionally encoded points with a view-direction branch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.fields.base import Field, FieldConfig, register_field
from scene3d.fields.encoding import positional_encoding, positional_encoding_dim
from scene3d.fields.shared_head import LOG_DENSITY_RANGE, SharedHead


@dataclass
class MLPFieldConfig(FieldConfig):
    """Small CPU default; `paper()` is NeRF's 10/4 frequencies, 8 x 256 trunk, skip after layer 4,
    128-wide view branch, Adam at 5e-4. code_dim: with `head="pvd"`, the width of the code the trunk
    hands PVD's shared sigma_net (the authors give it the hash encoding's width, so that a hash-grid
    teacher's sigma_net fits; the distiller sets it to the teacher's)."""

    n_freq_xyz: int = 6
    n_freq_dir: int = 2
    depth: int = 4
    width: int = 64
    skips: tuple[int, ...] = (2,)
    color_width: int = 32
    code_dim: int = 16
    lr: float = 5e-3

    @classmethod
    def paper(cls, **overrides: Any) -> MLPFieldConfig:
        return cls(**{"n_freq_xyz": 10, "n_freq_dir": 4, "depth": 8, "width": 256, "skips": (4,),
                      "color_width": 128, "lr": 5e-4, **overrides})


@register_field("mlp")
class MLPField(Field):
    """embed: gamma(x) -> ReLU trunk (input re-injected after the `skips` layers) -> width features.
    decode: linear density head; colour MLP on (bottleneck(features), gamma(dir)). With `head="pvd"`
    the trunk ends in a linear map to a code_dim code that PVD's shared sigma_net and color_net decode."""

    Config = MLPFieldConfig
    config: MLPFieldConfig

    def __init__(self, config: MLPFieldConfig):
        super().__init__(config)
        c = config
        if any(not 0 <= i < c.depth - 1 for i in c.skips):
            raise ValueError(f"skips {c.skips} must name trunk layers 0..{c.depth - 2}")
        in_dim = positional_encoding_dim(3, c.n_freq_xyz)
        dims_in = [in_dim] + [c.width + (in_dim if i in c.skips else 0) for i in range(c.depth - 1)]
        self.trunk = nn.ModuleList(nn.Linear(d, c.width) for d in dims_in)
        self.head = None
        if c.head == "pvd":  # the authors' nerf_mlp ends in a linear layer to the code, then the shared head
            self.to_code = nn.Linear(c.width, c.code_dim)
            self.head = SharedHead(c.code_dim, c.color_dim)
            self.density_bounds = LOG_DENSITY_RANGE
        else:
            self.density_head = nn.Linear(c.width, 1)
            self.bottleneck = nn.Linear(c.width, c.width)
            self.color_head = nn.Sequential(
                nn.Linear(c.width + positional_encoding_dim(3, c.n_freq_dir), c.color_width), nn.ReLU(),
                nn.Linear(c.color_width, c.color_dim))

    def embed(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B W"]:
        encoded = positional_encoding(self.normalize(x) * 2 - 1, self.config.n_freq_xyz)
        h = encoded
        for i, layer in enumerate(self.trunk):
            h = torch.relu(layer(h))
            if i in self.config.skips:
                h = torch.cat([encoded, h], dim=-1)
        return h if self.head is None else self.to_code(h)

    def interface(self, features: Float[Tensor, "*B W"]) -> Float[Tensor, "*B 16"] | None:
        return None if self.head is None else self.head.interface(features)

    def decode_density(self, features: Float[Tensor, "*B W"]) -> Float[Tensor, "*B"]:
        if self.head is not None:
            return self.head.raw(features)[..., 0]
        return self.density_head(features)[..., 0]

    def decode(self, features: Float[Tensor, "*B W"], dirs: Float[Tensor, "*B 3"]
               ) -> tuple[Float[Tensor, "*B"], Float[Tensor, "*B C"]]:
        if self.head is not None:
            return self.head.decode(features, dirs)
        view = positional_encoding(dirs, self.config.n_freq_dir)
        rgb = torch.sigmoid(self.color_head(torch.cat([self.bottleneck(features), view], dim=-1)))
        return self.decode_density(features), rgb
