"""Diffusion priors behind one interface (`DiffusionPrior`): a small pixel-space class-conditional
prior trained here and Stable Diffusion from a local folder. `load_prior(path)` picks by layout."""

from __future__ import annotations

from pathlib import Path

from scene3d.diffusion.base import DiffusionPrior, NoiseEstimator, cfg_noise
from scene3d.diffusion.pixel import PixelPrior, PixelPriorConfig
from scene3d.diffusion.stable import StableDiffusionPrior

PRIORS: dict[str, type[DiffusionPrior]] = {"pixel": PixelPrior, "stable-diffusion": StableDiffusionPrior}


def load_prior(path: str | Path) -> DiffusionPrior:
    """A pixel prior folder (has prior.json; a run dir's `prior/` is found too) or a Stable Diffusion folder."""
    path = Path(path)
    if (path / "prior" / "prior.json").is_file():
        path = path / "prior"
    if (path / "prior.json").is_file():
        return PixelPrior.from_pretrained(path)
    return StableDiffusionPrior.from_pretrained(path)


__all__ = ["PRIORS", "DiffusionPrior", "NoiseEstimator", "PixelPrior", "PixelPriorConfig", "StableDiffusionPrior",
           "cfg_noise", "load_prior"]
