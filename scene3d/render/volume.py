"""Emission-absorption volume rendering along rays (Max 1995; NeRF's quadrature).

For samples i along a ray with densities sigma_i and step lengths delta_i:
    alpha_i = 1 - exp(-sigma_i delta_i),  T_i = exp(-sum_{j<i} sigma_j delta_j),  w_i = T_i alpha_i,
and any per-sample quantity (colour, features, distance) is composited as sum_i w_i v_i.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def compute_weights(sigmas: Float[Tensor, "... S"], deltas: Float[Tensor, "... S"]
                    ) -> tuple[Float[Tensor, "... S"], Float[Tensor, "... S"]]:
    """(weights w_i, transmittance T_i before each sample). The optical depth before each sample is an
    exclusive cumulative sum, not `cumsum - tau`: an overflowing density (sigma = inf) then gives
    T = 0 behind it instead of inf - inf = NaN, and large depths lose no precision to cancellation."""
    tau = sigmas * deltas
    depth_before = torch.cat([torch.zeros_like(tau[..., :1]), torch.cumsum(tau[..., :-1], dim=-1)], dim=-1)
    transmittance = torch.exp(-depth_before)
    return transmittance * (1.0 - torch.exp(-tau)), transmittance


def composite(weights: Float[Tensor, "... S"], values: Float[Tensor, "... S C"]) -> Float[Tensor, "... C"]:
    """sum_i w_i v_i for N-d values (RGB, features, normals, ...)."""
    return torch.einsum("...s,...sc->...c", weights, values)


def accumulate(weights: Float[Tensor, "... S"]) -> Float[Tensor, "..."]:
    """Accumulated opacity sum_i w_i in [0, 1]."""
    return weights.sum(dim=-1)


def expected_distance(weights: Float[Tensor, "... S"], t: Float[Tensor, "... S"]) -> Float[Tensor, "..."]:
    """sum_i w_i t_i: the expected ray distance, tending to 0 where the ray sees nothing (the
    convention of the synthetic depth maps); divide by the accumulation for a normalised depth."""
    return (weights * t).sum(dim=-1)


def blend_background(color: Float[Tensor, "... C"], accumulation: Float[Tensor, "..."],
                     background: Float[Tensor, "... C"]) -> Float[Tensor, "... C"]:
    """Composite over a background seen through the remaining transmittance 1 - acc."""
    return color + (1.0 - accumulation)[..., None] * background
