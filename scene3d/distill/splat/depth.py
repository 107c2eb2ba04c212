"""A small monocular depth network trained here, the learned alternative to dataset depth for lifting.

RGB [B, 3, H, W] -> log camera-z depth and a foreground logit per pixel, by a small convolutional
encoder-decoder (two stride-2 stages, a dilated bottleneck, skip connections). Loss: L1 on log depth
over foreground pixels + BCE on the foreground mask. `depth_fn(net)` returns depth maps with 0 where
the net predicts background, the format `SplatDistiller(depth_fn=...)` expects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.config import Range
from scene3d.data.dataset import MultiViewDataset
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import FitResult, RunConfig, fit


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation), nn.GroupNorm(8, cout),
                         nn.GELU())


class DepthNet(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.enc1, self.enc2, self.enc3 = _block(3, w), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 2)
        self.mid = nn.Sequential(_block(2 * w, 2 * w, dilation=2), _block(2 * w, 2 * w, dilation=4))
        self.dec2, self.dec1 = _block(4 * w, 2 * w), _block(3 * w, w)
        self.head = nn.Conv2d(w, 2, 1)

    def forward(self, images: Float[Tensor, "B 3 H W"]) -> tuple[Float[Tensor, "B H W"], Float[Tensor, "B H W"]]:
        """(log depth, foreground logit) per pixel."""
        e1 = self.enc1(images)
        e2 = self.enc2(e1)
        x = self.mid(self.enc3(e2))
        x = self.dec2(torch.cat([F.interpolate(x, size=e2.shape[-2:], mode="bilinear"), e2], 1))
        x = self.dec1(torch.cat([F.interpolate(x, size=e1.shape[-2:], mode="bilinear"), e1], 1))
        out = self.head(x)
        return out[:, 0], out[:, 1]


@dataclass
class DepthNetConfig:
    width: Annotated[int, Range(1)] = 32
    steps: Annotated[int, Range(1)] = 400
    batch_size: Annotated[int, Range(1)] = 8
    lr: Annotated[float, Range(0, above=True)] = 2e-3
    seed: int = 0


class DepthNetTrainer:
    """The depth net's training as a `scene3d.train.Trainable`: per step a batch of views drawn with its
    own generator, AdamW with a cosine learning rate."""

    name = "depth net"

    def __init__(self, worlds: list[MultiViewDataset], cfg: DepthNetConfig):
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = DepthNet(cfg.width)
        self.images = torch.cat([rearrange(w.images, "n h w c -> n c h w") for w in worlds])
        self.depths = torch.cat([w.depths for w in worlds])
        self.fg = self.depths > 0
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=1e-4)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.losses: list[float] = []  # per step, since the first (restored on resume)

    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        """L1 on log depth over foreground pixels + BCE on the foreground mask, on a random batch."""
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * (step - 1) / cfg.steps))).item()
        idx = torch.randint(len(self.images), (cfg.batch_size,), generator=self.generator)
        log_depth, logit = self.net(self.images[idx])
        m = self.fg[idx]
        depth_loss = (log_depth - self.depths[idx].clamp_min(1e-6).log()).abs()[m].mean()
        loss = depth_loss + F.binary_cross_entropy_with_logits(logit, m.float())
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(loss.item())
        return loss, {"loss": self.losses[-1]}

    def guarded_parameters(self) -> Iterator[tuple[str, Tensor]]:
        return self.net.named_parameters()

    def apply(self, step: int) -> dict[str, float]:
        self.opt.step()
        return {}

    def validate(self) -> dict[str, float]:
        return {}

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        return {"loss_last": self.losses[-1]} if self.losses else {}

    def checkpoint_config(self) -> dict[str, Any]:
        return {"depth_net": config_to_dict(self.cfg)}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                "losses": torch.tensor(self.losses, dtype=torch.float64),
                "rng": {"generator": self.generator.get_state()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["optimizer"])
        self.losses = state["losses"].tolist()
        self.generator.set_state(state["rng"]["generator"])


def train_depth_net(worlds: list[MultiViewDataset], cfg: DepthNetConfig | None = None, run: RunDir | None = None,
                    loop: RunConfig | None = None) -> tuple[DepthNet, list[float]]:
    """Fit the depth net to every view of `worlds` (their exact depth and masks) through
    `scene3d.train.fit`, in `run` (checkpoints, exact resume) or in memory (None); `loop` paces it
    (default: no progress bar). Returns the net, frozen, and the loss of every step."""
    cfg = cfg or DepthNetConfig()
    trainer = DepthNetTrainer(worlds, cfg)
    fit(trainer, run, loop or RunConfig(eval_every=0, progress=False), cfg.steps, job_config=cfg)
    return trainer.net.eval().requires_grad_(False), trainer.losses


def depth_fn(net: DepthNet):
    """images [V, H, W, 3] -> depth [V, H, W] (camera z; 0 where the net predicts background)."""

    @torch.no_grad()
    def predict(images: Float[Tensor, "V H W 3"]) -> Float[Tensor, "V H W"]:
        log_depth, logit = net(rearrange(images, "v h w c -> v c h w"))
        return torch.where(logit > 0, log_depth.exp(), torch.zeros_like(log_depth))

    return predict
