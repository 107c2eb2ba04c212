"""A small object classifier trained on synthetic renders, independent of the diffusion prior
(its own data seed and its own network), used to label views of distilled scenes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm import tqdm

from scene3d.checkpoint import load_checkpoint
from scene3d.data.synthetic import OBJECT_TYPES
from scene3d.diffusion.data import ObjectViews, render_objects
from scene3d.errors import CheckpointError
from scene3d.runs import RunDir


@dataclass
class ClassifierConfig:
    name: str = "classifier32"
    root: Path = Path("outputs")
    classes: tuple[str, ...] = OBJECT_TYPES
    resolution: int = 32
    channels: tuple[int, ...] = (16, 32, 64)
    views: ObjectViews = field(default_factory=ObjectViews)
    n_objects_per_class: int = 96
    views_per_object: int = 8
    n_val_objects_per_class: int = 16
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 1000  # a data seed the prior never sees


class ObjectClassifier(nn.Module):
    """conv-GN-SiLU stages with stride-2 downsampling, global average pool, linear head."""

    def __init__(self, n_classes: int, channels: tuple[int, ...] = (16, 32, 64), resolution: int = 32):
        super().__init__()
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(4, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, stride=2, padding=1), nn.GroupNorm(4, c), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_classes)
        self.resolution = resolution

    def forward(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B K"]:
        """Logits for images in [0, 1] (resized to the training resolution)."""
        r = self.resolution
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return self.head(self.features(images * 2 - 1).mean((2, 3)))

    @torch.no_grad()
    def predict(self, images: Float[Tensor, "B 3 H W"]) -> Int[Tensor, " B"]:
        return self(images).argmax(-1)


def train_classifier(config: ClassifierConfig, run: RunDir | None = None) -> tuple[ObjectClassifier, dict]:
    """Train on renders with hflip augmentation; returns the model and {'val_accuracy': ...}."""
    run = run or RunDir.create("classifier", config.name, root=config.root)
    run.save_config(config)
    data = render_objects(config.n_objects_per_class, config.views_per_object, config.resolution,
                          seed=config.seed, classes=config.classes, views=config.views)
    val = render_objects(config.n_val_objects_per_class, config.views_per_object, config.resolution,
                         seed=config.seed + 1, classes=config.classes, views=config.views)
    torch.manual_seed(config.seed)
    model = ObjectClassifier(len(config.classes), config.channels, config.resolution)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.steps)
    g = torch.Generator().manual_seed(config.seed)
    for step in tqdm(range(config.steps), desc="classifier", dynamic_ncols=True):
        idx = torch.randint(len(data.images), (config.batch_size,), generator=g)
        x = data.images[idx]
        x = torch.where((torch.rand(len(idx), generator=g) < 0.5)[:, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(model(x), data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 25 == 0:
            run.log_scalars(step + 1, {"loss": loss.item()})
    model.eval()
    metrics = {"val_accuracy": float((model.predict(val.images) == val.labels).float().mean())}
    run.save_checkpoint(config.steps, {"model": model.state_dict()}, config)
    run.save_metrics(metrics)
    run.close()
    return model, metrics


def load_classifier(path: str | Path) -> tuple[ObjectClassifier, tuple[str, ...]]:
    """From a classifier run directory (latest checkpoint) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        latest = RunDir(path).latest_checkpoint()
        if latest is None:
            raise CheckpointError(path, None, "no classifier checkpoint here (train one with train_classifier)")
        path = latest
    state, config = load_checkpoint(path)
    try:
        classes = tuple(config["classes"])
        model = ObjectClassifier(len(classes), tuple(config["channels"]), int(config["resolution"]))
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(path, "model", f"does not fit an ObjectClassifier ({err})") from None
    return model.eval(), classes
