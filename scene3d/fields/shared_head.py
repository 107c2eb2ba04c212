"""PVD's shared interface (Fang et al., AAAI 2023): every architecture ends in one 16-d feature ahead
of decoders all architectures share, so a student can inherit its teacher's decoders.

    code    = architecture-specific (hash encoding, NeRF trunk, VM components)
    feature = sigma_net(code)          [16] = (log density clipped to [-2, 7], 15 geometry values)
    sigma   = exp(feature[0])
    rgb     = sigmoid(color_net(SH(dir), feature[1:]))

as in the authors' `NeRFNetwork` (branch PVD-AL, `distill_mutual/network.py`): the hash grid and the
NeRF MLP share `sigma_net` (2 bias-free layers, 64 wide) and `color_net` (3 bias-free layers, 64
wide, on the 16 SH values of degree 3 and the 15 geometry values); TensoRF-VM emits the 16 values
itself (its density sum and a 15-d appearance basis, both clipped) and shares `color_net`; the
Plenoxels-like grid has no interface and no shared decoder. `inherit_decoders` copies the teacher's
shared decoders into a student, as the authors' non-strict load of the teacher checkpoint does.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.fields.encoding import sh_dim, spherical_harmonics

INTERFACE_DIM = 16           # 1 log density + 15 geometry features
LOG_DENSITY_RANGE = (-2.0, 7.0)  # the authors' sigma_clip_min / sigma_clip_max
SH_DEGREE = 3                # the 16-value direction encoding
HIDDEN = 64


def _mlp(in_dim: int, out_dim: int, layers: int, hidden: int = HIDDEN) -> nn.Sequential:
    """`layers` bias-free linear layers with ReLU between them (tiny-cuda-nn's fully fused MLP)."""
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    modules: list[nn.Module] = []
    for i in range(layers):
        modules.append(nn.Linear(dims[i], dims[i + 1], bias=False))
        if i < layers - 1:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def clip_interface(feature: Float[Tensor, "*B 16"], clip_all: bool = False) -> Float[Tensor, "*B 16"]:
    """Clip the log density (and with `clip_all` the geometry values too, as the authors' TensoRF does)
    to [-2, 7]."""
    lo, hi = LOG_DENSITY_RANGE
    if clip_all:
        return feature.clamp(lo, hi)
    return torch.cat([feature[..., :1].clamp(lo, hi), feature[..., 1:]], dim=-1)


class SharedHead(nn.Module):
    """The decoders every PVD architecture shares: `sigma_net` (code [code_dim] -> interface [16]; absent
    when the architecture emits the interface itself, code_dim None) and `color_net`."""

    def __init__(self, code_dim: int | None, color_dim: int = 3):
        super().__init__()
        self.sigma_net = None if code_dim is None else _mlp(code_dim, INTERFACE_DIM, layers=2)
        self.color_net = _mlp(sh_dim(SH_DEGREE) + INTERFACE_DIM - 1, color_dim, layers=3)

    def raw(self, code: Float[Tensor, "*B F"]) -> Float[Tensor, "*B 16"]:
        """The 16 values before clipping: sigma_net(code), or the code itself without a sigma_net."""
        return code if self.sigma_net is None else self.sigma_net(code)

    def clip(self, raw: Float[Tensor, "*B 16"]) -> Float[Tensor, "*B 16"]:
        """The interface of raw values (the authors clip every value of TensoRF's, the density of the others)."""
        return clip_interface(raw, clip_all=self.sigma_net is None)

    def interface(self, code: Float[Tensor, "*B F"]) -> Float[Tensor, "*B 16"]:
        """The 16-d feature of a code."""
        return self.clip(self.raw(code))

    def decode(self, code: Float[Tensor, "*B F"], dirs: Float[Tensor, "*B 3"]
               ) -> tuple[Float[Tensor, "*B"], Float[Tensor, "*B C"]]:
        """(log density before the clip, colour from the clipped interface). The field's `activate`
        clips the density (`density_bounds`); the distiller's density level sees the value before the
        clip, so a student point below -2 whose teacher is dense still gets a gradient."""
        raw = self.raw(code)
        return raw[..., 0], self.color(self.clip(raw), dirs)

    def color(self, feature: Float[Tensor, "*B 16"], dirs: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B C"]:
        """Colour in [0, 1] from the interface's geometry values and the view direction."""
        view = spherical_harmonics(dirs, SH_DEGREE)
        return torch.sigmoid(self.color_net(torch.cat([view, feature[..., 1:]], dim=-1)))


def inherit_decoders(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Copy every shared-decoder tensor (`head.*`) of the teacher into the student where the student
    has one of the same name and shape; returns the names copied (empty when either has no head)."""
    source = {k: v for k, v in teacher.state_dict().items() if k.startswith("head.")}
    target = student.state_dict()
    copied = [k for k, v in source.items() if k in target and target[k].shape == v.shape]
    with torch.no_grad():
        for k in copied:
            target[k].copy_(source[k])
    return copied
