"""A small monocular depth network trained here, the learned alternative to dataset depth for lifting.

RGB [B, 3, H, W] -> log camera-z depth and a foreground logit per pixel, by a small convolutional
encoder-decoder (two stride-2 stages, a dilated bottleneck, skip connections). Loss: L1 on log depth
over foreground pixels + BCE on the foreground mask. `depth_fn(net)` returns depth maps with 0 where
the net predicts background, the format `SplatDistiller(depth_fn=...)` expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn
from tqdm import tqdm

from scene3d.data.dataset import MultiViewDataset


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
    width: int = 32
    steps: int = 400
    batch_size: int = 8
    lr: float = 2e-3
    seed: int = 0


def train_depth_net(worlds: list[MultiViewDataset], cfg: DepthNetConfig | None = None,
                    progress: bool = False) -> tuple[DepthNet, list[float]]:
    """Fit the depth net to every view of `worlds` (their exact depth and masks); returns it frozen."""
    cfg = cfg or DepthNetConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = DepthNet(cfg.width)
    images = torch.cat([rearrange(w.images, "n h w c -> n c h w") for w in worlds])
    depths = torch.cat([w.depths for w in worlds])
    fg = depths > 0
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for step in tqdm(range(cfg.steps), desc="depth net", disable=not progress):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / cfg.steps))).item()
        idx = torch.randint(len(images), (cfg.batch_size,), generator=g)
        log_depth, logit = net(images[idx])
        m = fg[idx]
        depth_loss = (log_depth - depths[idx].clamp_min(1e-6).log()).abs()[m].mean()
        loss = depth_loss + F.binary_cross_entropy_with_logits(logit, m.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return net.eval().requires_grad_(False), losses


def depth_fn(net: DepthNet):
    """images [V, H, W, 3] -> depth [V, H, W] (camera z; 0 where the net predicts background)."""

    @torch.no_grad()
    def predict(images: Float[Tensor, "V H W 3"]) -> Float[Tensor, "V H W"]:
        log_depth, logit = net(rearrange(images, "v h w c -> v c h w"))
        return torch.where(logit > 0, log_depth.exp(), torch.zeros_like(log_depth))

    return predict
