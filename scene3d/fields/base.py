"""The Field protocol every radiance-field architecture implements, its registry and checkpoints.

A field maps points x (inside an axis-aligned box) and view directions to a density sigma >= 0 and
a colour (3 channels, or `color_dim` channels for feature fields). The work is split the way
progressive volume distillation (PVD) needs it:

    embed(x)                 -> features          (architecture specific: MLP trunk, VM planes,
                                                    voxel grid, hash tables)
    decode(features, dirs)   -> (sigma_preact, rgb)
    activate(sigma_preact)   -> sigma = trunc_exp(clamp(sigma_preact))

`query(x, dirs)` and `density(x)` chain these and give zero density outside the box.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.checkpoint import load_checkpoint, save_checkpoint
from scene3d.errors import CheckpointError

TRUNC_EXP_BOUND = 15.0


class TruncExp(torch.autograd.Function):
    """exp(x) forward; backward uses exp(clamp(x, -15, 15)) so huge pre-activations cannot blow up
    the gradient (Instant-NGP / torch-ngp's truncated exponential)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(-TRUNC_EXP_BOUND, TRUNC_EXP_BOUND))


def trunc_exp(x: Tensor) -> Tensor:
    return TruncExp.apply(x)


@dataclass
class FieldConfig:
    """Options every field has.

    aabb: the box (xmin, ymin, zmin, xmax, ymax, zmax) the field lives in.
    color_dim: colour channels (3 for RGB; N for a feature field), squashed by a sigmoid.
    density_clamp: optional (lo, hi) clamp of the density pre-activation (PVD uses (-2, 7)).
    lr: base Adam learning rate of the architecture (some parameter groups scale it).
    lr_final_ratio: the architecture's schedule: the rate decays exponentially to lr x this ratio
        over a fitting run (NeRF and TensoRF decay to 0.1; `FitConfig.lr_final_ratio` overrides it).
    sparsity: weight of Plenoxels' sparsity prior, mean log(1 + 2 sigma^2) over `sparsity_samples`
        uniform points in the box per step (0: off); it removes the faint floaters in free space
        that the photometric loss barely sees and that keep occupancy-grid cells from emptying.
    head: "native" (the architecture's own paper decoder) or "pvd" (PVD's 16-d interface and the
        decoders every architecture shares, `fields.shared_head`; the grid has none and ignores it).
    """

    aabb: tuple[float, ...] = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)
    color_dim: int = 3
    density_clamp: tuple[float, float] | None = None
    lr: float = 1e-2
    lr_final_ratio: float = 0.1
    sparsity: float = 0.0
    sparsity_samples: int = 4096
    head: Literal["native", "pvd"] = "native"

    def __post_init__(self) -> None:
        # Configs read back from JSON carry lists where tuples were written.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        if len(self.aabb) != 6:
            raise ValueError(f"aabb needs 6 numbers (min xyz, max xyz), got {self.aabb}")
        if self.head not in ("native", "pvd"):
            raise ValueError(f"head must be 'native' or 'pvd', got {self.head!r}")

    @classmethod
    def paper(cls, **overrides: Any) -> FieldConfig:
        """The configuration of the architecture's paper (override any field)."""
        return cls(**overrides)


class Field(nn.Module):
    """Base class of all radiance fields. Subclasses set `Config`, implement `embed`,
    `decode_density` and `decode`, and may override the training hooks at the bottom."""

    Config: ClassVar[type[FieldConfig]] = FieldConfig
    name: ClassVar[str] = "field"
    density_bounds: tuple[float, float] | None = None  # the architecture's own clamp (PVD's head: [-2, 7])

    def __init__(self, config: FieldConfig):
        super().__init__()
        self.config = config
        self.register_buffer("aabb", torch.tensor(config.aabb, dtype=torch.float32).reshape(2, 3),
                             persistent=False)

    # coordinates --------------------------------------------------------------------------------
    def normalize(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B 3"]:
        """World points -> [0, 1]^3 inside the box (clamped outside it)."""
        return ((x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])).clamp(0.0, 1.0)

    def inside(self, x: Float[Tensor, "*B 3"]) -> Tensor:
        return ((x >= self.aabb[0]) & (x <= self.aabb[1])).all(dim=-1)

    # the protocol -------------------------------------------------------------------------------
    def embed(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B F"]:
        """World points -> architecture-specific features."""
        raise NotImplementedError

    def decode_density(self, features: Float[Tensor, "*B F"]) -> Float[Tensor, "*B"]:
        """Features -> density pre-activation (the colour branch is skipped)."""
        raise NotImplementedError

    def decode(self, features: Float[Tensor, "*B F"], dirs: Float[Tensor, "*B 3"]
               ) -> tuple[Float[Tensor, "*B"], Float[Tensor, "*B C"]]:
        """Features and unit view directions -> (density pre-activation, colour in [0, 1])."""
        raise NotImplementedError

    def interface(self, features: Float[Tensor, "*B F"]) -> Float[Tensor, "*B 16"] | None:
        """PVD's 16-d feature (clipped log density, 15 geometry values) of a `head="pvd"` field; None
        for an architecture without one (native decoders, or the grid)."""
        return None

    def activate(self, sigma_preact: Float[Tensor, "*B"]) -> Float[Tensor, "*B"]:
        """Clamp of the pre-activation (`config.density_clamp`, else `density_bounds`), then the
        truncated exponential."""
        bounds = self.config.density_clamp or self.density_bounds
        if bounds is not None:
            sigma_preact = sigma_preact.clamp(*bounds)
        return trunc_exp(sigma_preact)

    def query(self, x: Float[Tensor, "*B 3"], dirs: Float[Tensor, "*B 3"]
              ) -> tuple[Float[Tensor, "*B"], Float[Tensor, "*B C"]]:
        """Density (zero outside the box) and colour at points x seen along dirs."""
        sigma_preact, rgb = self.decode(self.embed(x), dirs)
        return self.activate(sigma_preact) * self.inside(x), rgb

    def density(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B"]:
        """Density at points x (zero outside the box)."""
        return self.activate(self.decode_density(self.embed(x))) * self.inside(x)

    # training hooks -------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups with their learning rates (one group at `lr` by default)."""
        return [{"params": list(self.parameters()), "lr": self.config.lr}]

    def regularization(self) -> Tensor:
        """The architecture's own regulariser (TV, L1, ...), added to the photometric loss."""
        return self.sparsity_loss()

    def sparsity_loss(self) -> Tensor:
        """`config.sparsity` x mean log(1 + 2 sigma^2) at uniform random points in the box."""
        if self.config.sparsity <= 0:
            return torch.zeros((), device=self.aabb.device)
        u = torch.rand(self.config.sparsity_samples, 3, device=self.aabb.device)
        sigma = self.density(self.aabb[0] + u * (self.aabb[1] - self.aabb[0]))
        return self.config.sparsity * torch.log1p(2 * sigma.square()).mean()

    def on_train_step(self, step: int) -> bool:
        """Called before optimizer step `step`; returns True when parameters were replaced (e.g.
        TensoRF upsampling), so the caller must rebuild its optimizer."""
        return False

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"params={self.parameter_count():,}"


# registry ----------------------------------------------------------------------------------------
FIELDS: dict[str, type[Field]] = {}


def register_field(name: str):
    """Class decorator adding a Field subclass to `FIELDS` under `name`."""

    def add(cls: type[Field]) -> type[Field]:
        if name in FIELDS:
            raise ValueError(f"field '{name}' is already registered")
        cls.name = name
        FIELDS[name] = cls
        return cls

    return add


def field_config(name: str, preset: str = "default", **overrides: Any) -> FieldConfig:
    """The config of registered field `name`: its small CPU default or its paper size."""
    if name not in FIELDS:
        raise KeyError(f"unknown field '{name}'; registered: {sorted(FIELDS)}")
    config_cls = FIELDS[name].Config
    if preset == "default":
        return config_cls(**overrides)
    if preset == "paper":
        return config_cls.paper(**overrides)
    raise ValueError(f"unknown preset '{preset}' (use 'default' or 'paper')")


def build_field(name: str, preset: str = "default", **overrides: Any) -> Field:
    """Build any registered architecture, e.g. `build_field("hashgrid", aabb=(...), log2_table_size=16)`."""
    config = field_config(name, preset, **overrides)
    return FIELDS[name](config)


# checkpoints ----------------------------------------------------------------------------------------
def field_spec(field: Field) -> dict[str, Any]:
    """JSON description that rebuilds the field: its registry name and full config."""
    return {"field": field.name, "config": dataclasses.asdict(field.config)}


def field_from_spec(spec: dict[str, Any], path: str | Path | None = None) -> Field:
    try:
        return build_field(spec["field"], **spec["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(path, "config.field", f"cannot rebuild the field ({err})") from None


def load_field_state(field: Field, state: dict[str, Tensor], path: str | Path | None = None) -> None:
    """Load a state dict, raising CheckpointError (naming the path) when it does not fit."""
    try:
        field.load_state_dict(state)
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(path, "field", f"state does not fit {field.name} ({err})") from None


def save_field(field: Field, path: str | Path) -> Path:
    """One atomic safetensors file holding the weights and the config that rebuilds the field."""
    return save_checkpoint(path, {"field": field.state_dict()}, field_spec(field))


def load_field(path: str | Path, map_location: str | torch.device = "cpu") -> Field:
    """Rebuild a field saved by `save_field` (or a training checkpoint). Raises CheckpointError."""
    state, config = load_checkpoint(path, map_location)
    if "field" not in state or "field" not in config:
        raise CheckpointError(path, "field", "not a field checkpoint (no 'field' state or config)")
    field = field_from_spec(config, path).to(map_location)
    load_field_state(field, state["field"], path)
    return field
