"""Instant-NGP (Mueller et al. 2022): a multiresolution hash encoding and tiny MLP decoders, in pure
torch. The encoding is vectorised over levels and the 8 trilinear corners (one gather for all);
`hash_encode_reference` is the slow, loop-over-corners version the tests compare it with."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.fields.base import Field, FieldConfig, register_field
from scene3d.fields.encoding import cell_corners, corner_combine, sh_dim, spherical_harmonics
from scene3d.fields.shared_head import LOG_DENSITY_RANGE, SharedHead

# The spatial-hash primes of the paper: h(x) = xor_i (x_i * pi_i) mod T.
PRIMES = (1, 2654435761, 805459861)


@dataclass
class HashGridFieldConfig(FieldConfig):
    """Small CPU default; `paper()` is Instant-NGP's NeRF: 16 levels x 2 features, tables of 2^19,
    resolutions 16 .. 2048 x bound (bound = half the largest box side), a one-hidden-layer 64-wide
    density MLP with 16 outputs, a two-hidden-layer 64-wide colour MLP on those and the 16-value SH
    view encoding, Adam(lr 1e-2, betas (0.9, 0.99), eps 1e-15), weight decay 1e-6 on the MLPs, and
    a constant rate (Instant-NGP first decays it after 20k steps, far beyond a CPU run; decaying
    it over a 600 s benchmark cost 1 dB at equal steps)."""

    n_levels: int = 8
    features_per_level: int = 2
    log2_table_size: int = 16
    base_resolution: int = 16
    finest_resolution: float = 256.0
    hidden_dim: int = 64
    geo_dim: int = 16
    color_layers: int = 2
    sh_degree: int = 3
    init_scale: float = 1e-4
    weight_decay: float = 1e-6
    lr: float = 1e-2
    lr_final_ratio: float = 1.0

    @classmethod
    def paper(cls, **overrides: Any) -> HashGridFieldConfig:
        aabb = overrides.get("aabb", cls.aabb)
        bound = max(hi - lo for lo, hi in zip(aabb[:3], aabb[3:], strict=True)) / 2
        return cls(**{"n_levels": 16, "features_per_level": 2, "log2_table_size": 19, "base_resolution": 16,
                      "finest_resolution": 2048.0 * bound, **overrides})

    def level_resolutions(self) -> list[int]:
        """Grid vertices per axis of each level: floor(N_min b^l), b = (N_max / N_min)^(1 / (L - 1))."""
        growth = math.exp((math.log(self.finest_resolution) - math.log(self.base_resolution))
                          / max(self.n_levels - 1, 1))
        return [max(2, math.floor(self.base_resolution * growth**level)) for level in range(self.n_levels)]


class HashEncoding(nn.Module):
    """x in [0,1]^3 -> [L * F] features. Levels whose grid fits the table (R^3 <= T) are indexed
    densely, the others through the spatial hash; all levels live in one [sum T_l, F] table."""

    def __init__(self, resolutions: list[int], features_per_level: int, log2_table_size: int,
                 init_scale: float = 1e-4):
        super().__init__()
        table_size = 2**log2_table_size
        sizes = [min(r**3, table_size) for r in resolutions]
        self.n_levels, self.features_per_level = len(resolutions), features_per_level
        self.register_buffer("resolutions", torch.tensor(resolutions), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes), persistent=False)
        self.register_buffer("offsets", torch.tensor([0, *sizes[:-1]]).cumsum(0), persistent=False)
        self.n_dense = sum(r**3 <= table_size for r in resolutions)
        self.register_buffer("strides", torch.tensor([[1, r, r * r] for r in resolutions]), persistent=False)
        self.register_buffer("primes", torch.tensor(PRIMES), persistent=False)
        self.hash_mask = table_size - 1
        table = torch.empty(sum(sizes), features_per_level).uniform_(-init_scale, init_scale)
        self.table = nn.Parameter(table)

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.features_per_level

    def forward(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B LF"]:
        batch = x.shape[:-1]
        x = x.reshape(-1, 3)
        # Per level and axis, the two corner coordinates and their linear weights: [P,L,3,2].
        coords, w = cell_corners(x[:, None, :], self.resolutions[:, None])
        weights = corner_combine(w, torch.mul)                                     # [P,L,8]
        # The coarse levels (a prefix, since resolutions grow) are indexed densely, the rest hashed.
        n = self.n_dense
        dense_index = corner_combine(coords[:, :n] * self.strides[:n, :, None], torch.add)
        hashed = corner_combine(coords[:, n:] * self.primes[:, None], torch.bitwise_xor) & self.hash_mask
        index = torch.cat([dense_index, hashed], dim=1) + self.offsets[:, None]
        values = self.table.index_select(0, index.flatten())  # index_select: its backward is fast on CPU
        values = rearrange(values, "(p l c) f -> p l c f", l=self.n_levels, c=8)
        out = torch.einsum("plc,plcf->plf", weights, values)
        return rearrange(out, "p l f -> p (l f)").reshape(*batch, self.out_dim)


def hash_encode_reference(encoding: HashEncoding, x: Float[Tensor, "P 3"]) -> Float[Tensor, "P LF"]:
    """The same encoding computed level by level and corner by corner (slow; for tests)."""
    outputs = []
    for level in range(encoding.n_levels):
        r = int(encoding.resolutions[level])
        size, offset = int(encoding.sizes[level]), int(encoding.offsets[level])
        pos = x * (r - 1)
        cell = pos.floor().long().clamp(max=r - 2)
        frac = pos - cell
        acc = torch.zeros(len(x), encoding.features_per_level, dtype=x.dtype, device=x.device)
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    cx, cy, cz = cell[:, 0] + dx, cell[:, 1] + dy, cell[:, 2] + dz
                    if r**3 <= size:
                        index = cx + r * cy + r * r * cz
                    else:
                        index = ((cx * PRIMES[0]) ^ (cy * PRIMES[1]) ^ (cz * PRIMES[2])) % size
                    w = ((frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                         * (frac[:, 2] if dz else 1 - frac[:, 2]))
                    acc = acc + w[:, None] * encoding.table[offset + index]
        outputs.append(acc)
    return torch.cat(outputs, dim=-1)


@register_field("hashgrid")
class HashGridField(Field):
    """embed: hash encoding of x. decode: density MLP -> geo_dim values (the first is the density
    pre-activation); colour MLP on (those, SH(dir)). With `head="pvd"` the two MLPs are PVD's shared
    `sigma_net` and `color_net` (`fields.shared_head`)."""

    Config = HashGridFieldConfig
    config: HashGridFieldConfig

    def __init__(self, config: HashGridFieldConfig):
        super().__init__(config)
        c = config
        self.encoding = HashEncoding(c.level_resolutions(), c.features_per_level, c.log2_table_size,
                                     c.init_scale)
        self.head = SharedHead(self.encoding.out_dim, c.color_dim) if c.head == "pvd" else None
        self.density_bounds = LOG_DENSITY_RANGE if self.head is not None else None
        if self.head is None:
            # Bias-free layers as in tiny-cuda-nn's fully fused MLPs. (With biases, the first steps,
            # which lower the density everywhere, can push every hidden ReLU dead for good.)
            self.density_mlp = nn.Sequential(nn.Linear(self.encoding.out_dim, c.hidden_dim, bias=False), nn.ReLU(),
                                             nn.Linear(c.hidden_dim, c.geo_dim, bias=False))
            layers: list[nn.Module] = []
            in_dim = c.geo_dim + sh_dim(c.sh_degree)
            for _ in range(c.color_layers):
                layers += [nn.Linear(in_dim, c.hidden_dim, bias=False), nn.ReLU()]
                in_dim = c.hidden_dim
            self.color_mlp = nn.Sequential(*layers, nn.Linear(in_dim, c.color_dim, bias=False))

    def embed(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B LF"]:
        return self.encoding(self.normalize(x))

    def interface(self, features: Float[Tensor, "*B LF"]) -> Float[Tensor, "*B 16"] | None:
        return None if self.head is None else self.head.interface(features)

    def decode_density(self, features: Float[Tensor, "*B LF"]) -> Float[Tensor, "*B"]:
        if self.head is not None:
            return self.head.raw(features)[..., 0]
        return self.density_mlp(features)[..., 0]

    def decode(self, features: Float[Tensor, "*B LF"], dirs: Float[Tensor, "*B 3"]
               ) -> tuple[Float[Tensor, "*B"], Float[Tensor, "*B C"]]:
        if self.head is not None:
            return self.head.decode(features, dirs)
        h = self.density_mlp(features)
        view = spherical_harmonics(dirs, self.config.sh_degree)
        rgb = torch.sigmoid(self.color_mlp(torch.cat([h, view], dim=-1)))
        return h[..., 0], rgb

    def param_groups(self) -> list[dict[str, Any]]:
        mlps = [p for name, p in self.named_parameters() if not name.startswith("encoding.")]
        c = self.config
        return [{"params": [self.encoding.table], "lr": c.lr, "eps": 1e-15},
                {"params": mlps, "lr": c.lr, "eps": 1e-15, "weight_decay": c.weight_decay}]
