"""Stable Diffusion as a latent prior, loaded only from a local folder in the diffusers layout.

    <folder>/unet/           UNet2DConditionModel (config.json + diffusion_pytorch_model.safetensors)
    <folder>/vae/            AutoencoderKL
    <folder>/text_encoder/   transformers CLIPTextModel
    <folder>/tokenizer/      CLIPTokenizer (vocab.json, merges.txt, ...)
    <folder>/scheduler/      scheduler_config.json (DDPM or DDIM; a DDPMScheduler is built from it)

This is what `StableDiffusionPipeline.save_pretrained` writes (or a Hugging Face snapshot of
`stable-diffusion-v1-5/stable-diffusion-v1-5`). Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from scene3d.diffusion.base import DiffusionPrior
from scene3d.errors import DataError

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
VIEW_SUFFIX = "{prompt}, {view} view"


class StableDiffusionPrior(DiffusionPrior):
    """eps_phi(z_t, t, text) on VAE latents z = scaling_factor * E(2 x - 1) (the VAE's own factor).

    `resolution` is the image size fed to the VAE (renders are resized to it): 512 for SD 1.x.
    """

    latent = True

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, resolution: int = 512):
        super().__init__(scheduler)
        self.denoiser, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.resolution = resolution
        self.scaling_factor = float(vae.config.scaling_factor)
        self._cache: dict[str, Tensor] = {}
        self.freeze()

    @classmethod
    def from_pretrained(cls, folder: str | Path, resolution: int | None = None,
                        dtype: torch.dtype = torch.float32) -> StableDiffusionPrior:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = Path(folder)
        missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
        if missing:
            raise DataError(folder, ", ".join(missing),
                            "missing Stable Diffusion component folder(s). Put a local copy of the model in the "
                            "diffusers layout there: unet/, vae/, text_encoder/, tokenizer/, scheduler/ (e.g. "
                            "StableDiffusionPipeline.save_pretrained(folder), or a Hugging Face snapshot of "
                            "stable-diffusion-v1-5 copied by hand); weights are never downloaded")
        kw = {"local_files_only": True}
        weights = {**kw, "use_safetensors": True}  # never unpickle .bin / .ckpt weights
        try:
            unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype, **weights)
            vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype, **weights)
            text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype, **weights)
        except OSError as err:
            raise DataError(folder, "unet/vae/text_encoder", f"cannot load .safetensors weights ({err}); "
                            "pickled .bin weights are never loaded") from None
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", **kw)
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler", **kw)
        if resolution is None:
            resolution = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
        return cls(unet, vae, text_encoder, tokenizer, scheduler, resolution)

    # model space ---------------------------------------------------------------------------
    def encode(self, images: Float[Tensor, "B 3 H W"]) -> Tensor:
        r = self.resolution
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images, size=(r, r), mode="bilinear", align_corners=False)
        posterior = self.vae.encode((images * 2 - 1).to(self.vae.dtype)).latent_dist
        return posterior.sample() * self.scaling_factor

    def decode(self, x: Tensor) -> Float[Tensor, "B 3 H W"]:
        images = self.vae.decode((x / self.scaling_factor).to(self.vae.dtype)).sample
        return ((images.float() + 1) / 2).clamp(0, 1)

    # conditioning --------------------------------------------------------------------------
    @torch.no_grad()
    def embed_text(self, text: str) -> Tensor:
        """CLIP last hidden states [L, D] for one text (cached)."""
        if text not in self._cache:
            ids = self.tokenizer(text, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            self._cache[text] = self.text_encoder(ids)[0][0]
        return self._cache[text]

    def condition(self, prompt: str, batch: int, views: list[str] | None = None) -> Tensor:
        texts = [prompt] * batch if views is None else [VIEW_SUFFIX.format(prompt=prompt, view=v) for v in views]
        return torch.stack([self.embed_text(t) for t in texts])

    def null_condition(self, batch: int) -> Tensor:
        return self.embed_text("")[None].expand(batch, -1, -1)

    def _forward(self, denoiser, x_t, t, cond, class_labels=None):
        dtype = self.denoiser.dtype
        out = denoiser(x_t.to(dtype), t, encoder_hidden_states=cond.to(dtype), class_labels=class_labels).sample
        return out.float()
