"""A small pixel-space, class-conditional diffusion prior (diffusers `UNet2DModel`).

Classes are object types (sphere, box, cylinder, torus); one extra embedding row is the null class
used for classifier-free guidance (labels are dropped to it with probability `label_drop` while
training). Saved with diffusers' `save_pretrained` (safetensors) plus a `prior.json` with the class
names, so a run directory is loadable by `PixelPrior.from_pretrained(run_dir / "prior")`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.checkpoint import atomic_write_json
from scene3d.config import Range
from scene3d.data.synthetic import OBJECT_TYPES
from scene3d.diffusion.base import DiffusionPrior
from scene3d.errors import DataError


@dataclass
class PixelPriorConfig:
    """UNet and schedule of the pixel prior. The default is CPU-sized (0.69M parameters at 32x32);
    `PixelPriorConfig.gpu()` is a DDPM-CIFAR-like size for a GPU."""

    resolution: Annotated[int, Range(4, 1024)] = 32
    classes: tuple[str, ...] = OBJECT_TYPES
    block_out_channels: Annotated[tuple[int, ...], Range(1)] = (16, 32, 64)
    layers_per_block: Annotated[int, Range(1)] = 1
    attention: bool = True  # self-attention at the lowest resolution
    norm_num_groups: Annotated[int, Range(1)] = 8
    num_train_timesteps: Annotated[int, Range(1)] = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    label_drop: Annotated[float, Range(0, 1)] = 0.1

    @classmethod
    def gpu(cls) -> PixelPriorConfig:
        return cls(resolution=64, block_out_channels=(128, 256, 256, 256), layers_per_block=2, norm_num_groups=32)


class PixelPrior(DiffusionPrior):
    """eps_phi(x_t, t, class) on images in [-1, 1]; `encode` maps [0,1] images (resized to the
    prior's resolution when needed) to [-1, 1]; `decode` maps back. `condition` ignores views."""

    latent = False

    def __init__(self, config: PixelPriorConfig, denoiser: nn.Module | None = None, scheduler=None):
        from diffusers import DDPMScheduler, UNet2DModel

        scheduler = scheduler or DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                                               beta_schedule=config.beta_schedule, prediction_type="epsilon")
        super().__init__(scheduler)
        self.config = config
        n = len(config.block_out_channels)
        attn = config.attention
        self.denoiser = denoiser or UNet2DModel(
            sample_size=config.resolution, in_channels=3, out_channels=3,
            block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
            down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D" if attn else "DownBlock2D",),
            up_block_types=("AttnUpBlock2D" if attn else "UpBlock2D",) + ("UpBlock2D",) * (n - 1),
            norm_num_groups=config.norm_num_groups, num_class_embeds=len(config.classes) + 1)

    @property
    def null_class(self) -> int:
        return len(self.config.classes)

    def encode(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 R R"]:
        r = self.config.resolution
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return images * 2 - 1

    def decode(self, x: Tensor) -> Float[Tensor, "B 3 R R"]:
        return ((x + 1) / 2).clamp(0, 1)

    def class_index(self, prompt: str) -> int:
        if prompt not in self.config.classes:
            raise DataError(None, "prompt", f"'{prompt}' is not a class of this prior; "
                            f"choose from {self.config.classes}")
        return self.config.classes.index(prompt)

    def condition(self, prompt: str, batch: int, views: list[str] | None = None) -> Tensor:
        return torch.full((batch,), self.class_index(prompt), dtype=torch.long, device=self.device)

    def null_condition(self, batch: int) -> Tensor:
        return torch.full((batch,), self.null_class, dtype=torch.long, device=self.device)

    def _forward(self, denoiser, x_t, t, cond, class_labels=None):
        return denoiser(x_t, t, class_labels=cond if class_labels is None else class_labels).sample

    # persistence ---------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """`folder/unet` (diffusers, safetensors), `folder/scheduler`, `folder/prior.json`."""
        folder = Path(folder)
        self.denoiser.save_pretrained(folder / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")
        atomic_write_json(folder / "prior.json", {"kind": "pixel", "config": asdict(self.config)})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> PixelPrior:
        from diffusers import DDPMScheduler, UNet2DModel

        folder = Path(folder)
        meta = folder / "prior.json"
        if not meta.is_file():
            raise DataError(meta, None, "no pixel prior here; train one with scripts/train_prior.py "
                            "(it writes <run>/prior/{prior.json,unet/,scheduler/})")
        try:
            raw = json.loads(meta.read_text())["config"]
            config = PixelPriorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise DataError(meta, "config", f"malformed ({err})") from None
        for sub in ("unet", "scheduler"):
            if not (folder / sub).is_dir():
                raise DataError(folder / sub, None, "missing (expected diffusers save_pretrained output)")
        unet = UNet2DModel.from_pretrained(folder / "unet", local_files_only=True, use_safetensors=True)
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        return cls(config, unet, scheduler).freeze()
