"""A small object classifier trained on synthetic renders, independent of the diffusion prior
(its own data seed and its own network), used to label views of distilled scenes.

To be an honest judge it has a rejection class, `none`, trained on images of no object (blank or
flat images, pixel and smooth noise, clutter of several random soft ellipses): without it every
render, even a blank one, is labelled as some object class. Object renders are augmented (flips,
desaturation, blur) so that the label depends on the shape rather than on crisp, saturated colour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
import tyro
from jaxtyping import Float, Int
from torch import Tensor, nn

from scene3d.checkpoint import load_checkpoint
from scene3d.data.synthetic import OBJECT_TYPES
from scene3d.diffusion.data import ObjectImages, ObjectViews, render_objects
from scene3d.errors import CheckpointError
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import FitResult, RunConfig, fit

NONE_CLASS = "none"


def clutter_images(n: int, size: int, generator: torch.Generator | None = None) -> Float[Tensor, "N 3 H W"]:
    """Images in [0, 1] that show none of the object classes: a blank or flat image (1/8), pixel
    noise (1/8), smooth noise (1/4), or 2 to 6 random soft ellipses, grey or coloured, on white (1/2)."""
    g = generator
    u = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    out = []
    for kind in torch.randint(8, (n,), generator=g).tolist():
        if kind == 0:
            img = torch.ones(3, 1, 1) if torch.rand(1, generator=g) < 0.5 else torch.rand(3, 1, 1, generator=g)
            img = img.expand(3, size, size)
        elif kind == 1:
            img = torch.rand(3, size, size, generator=g)
        elif kind < 4:
            cells = int(torch.randint(2, 9, (1,), generator=g))
            img = F.interpolate(torch.rand(1, 3, cells, cells, generator=g), size=(size, size), mode="bicubic",
                                align_corners=False)[0].clamp(0, 1)
        else:
            img = torch.ones(3, size, size)
            for _ in range(int(torch.randint(2, 7, (1,), generator=g))):
                cx, cy, ax, ay, angle, grey, soft = torch.rand(7, generator=g).tolist()
                cx, cy, ax, ay = 0.15 + 0.7 * cx, 0.15 + 0.7 * cy, 0.04 + 0.22 * ax, 0.04 + 0.22 * ay
                c, s = torch.cos(torch.tensor(angle * 3.1416)), torch.sin(torch.tensor(angle * 3.1416))
                dx, dy = xx - cx, yy - cy
                r = ((c * dx + s * dy) / ax) ** 2 + ((-s * dx + c * dy) / ay) ** 2
                alpha = torch.sigmoid((1 - r) / (0.05 + 0.3 * soft))
                colour = torch.rand(1, generator=g).expand(3) if grey < 0.3 else torch.rand(3, generator=g)
                img = img * (1 - alpha) + colour.view(3, 1, 1) * alpha
        out.append(img)
    return torch.stack(out)


def augment(images: Float[Tensor, "B 3 H W"], generator: torch.Generator) -> Float[Tensor, "B 3 H W"]:
    """Per image: desaturate towards grey by a random amount (p 0.3), 3x3 box blur (p 0.3)."""
    b = len(images)
    grey = images.mean(1, keepdim=True).expand_as(images)
    amount = torch.rand(b, 1, 1, 1, generator=generator) * (torch.rand(b, 1, 1, 1, generator=generator) < 0.3)
    images = images + amount * (grey - images)
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return torch.where((torch.rand(b, generator=generator) < 0.3)[:, None, None, None], blurred, images)


@dataclass
class ClassifierConfig:
    """Runs go to `<output_root>/classifier/<name>/` (name: classifier32) and resume from their latest checkpoint."""

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
    reject: bool = True  # add the `none` class, trained on `clutter_images` (as many as one object class)
    augment: bool = True  # random desaturation and blur of object renders (hflip always)
    # --name, --output-root, --checkpoint-every, --eval-every, ... (scene3d.train.RunConfig)
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: RunConfig(log_every=25, eval_every=100, checkpoint_every=100))


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


class ClassifierTrainer:
    """Cross-entropy training of an `ObjectClassifier` (AdamW, one-cycle learning rate) on renders (hflip,
    optional desaturation and blur) plus, with `reject`, clutter images labelled `none`; a
    `scene3d.train.Trainable` whose validation is the accuracy on held-out objects and clutter."""

    name = "classifier"

    def __init__(self, config: ClassifierConfig):
        self.config = config
        self.data, self.val = (_labelled_images(config, n, config.seed + k)
                               for k, n in enumerate((config.n_objects_per_class, config.n_val_objects_per_class)))
        torch.manual_seed(config.seed)
        self.model = ObjectClassifier(len(config.classes) + config.reject, config.channels, config.resolution)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, config.lr, total_steps=config.steps)
        self.generator = torch.Generator().manual_seed(config.seed)

    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        c, g = self.config, self.generator
        idx = torch.randint(len(self.data.images), (c.batch_size,), generator=g)
        x, y = self.data.images[idx], self.data.labels[idx]
        x = torch.where((torch.rand(len(idx), generator=g) < 0.5)[:, None, None, None], x.flip(-1), x)
        if c.augment:
            x = torch.where((y < len(c.classes))[:, None, None, None], augment(x, g), x)
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, {"loss": loss.item()}

    def guarded_parameters(self):
        return self.model.named_parameters()

    def apply(self, step: int) -> dict[str, float]:
        self.optimizer.step()
        self.scheduler.step()
        return {}

    def validate(self) -> dict[str, float]:
        """{'val_accuracy': ...} over the held-out objects and clutter."""
        return {"val_accuracy": float((self.model.predict(self.val.images) == self.val.labels).float().mean())}

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        self.model.eval()
        return self.validate()

    def checkpoint_config(self) -> dict[str, Any]:
        """The config `load_classifier` rebuilds the network from."""
        return config_to_dict(self.config)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])


def train_classifier(config: ClassifierConfig) -> tuple[ObjectClassifier, dict[str, Any]]:
    """Train to `config.steps` in `<output_root>/classifier/<name>/` (resuming its latest checkpoint when
    `config.run.resume`); returns the model and the final metrics ({'val_accuracy': ...} plus the loop's;
    empty when a limit ended the invocation early)."""
    trainer = ClassifierTrainer(config)
    result = fit(trainer, config.run.open("classifier", "classifier32"), config.run, config.steps, job_config=config)
    return trainer.model, result.metrics


def _labelled_images(config: ClassifierConfig, n_objects_per_class: int, seed: int) -> ObjectImages:
    data = render_objects(n_objects_per_class, config.views_per_object, config.resolution, seed=seed,
                          classes=config.classes, views=config.views)
    if not config.reject:
        return data
    n = n_objects_per_class * config.views_per_object
    clutter = clutter_images(n, config.resolution, torch.Generator().manual_seed(seed))
    labels = torch.full((n,), len(config.classes), dtype=torch.long)
    return ObjectImages(torch.cat([data.images, clutter]), torch.cat([data.labels, labels]),
                        (*config.classes, NONE_CLASS))


def load_classifier(path: str | Path) -> tuple[ObjectClassifier, tuple[str, ...]]:
    """From a classifier run directory (latest checkpoint) or a checkpoint file. The labels end
    with `none` when the classifier was trained with a rejection class."""
    path = Path(path)
    if path.is_dir():
        latest = RunDir(path).latest_checkpoint()
        if latest is None:
            raise CheckpointError(path, None, "no classifier checkpoint here (train one with train_classifier)")
        path = latest
    state, config = load_checkpoint(path)
    try:
        classes = tuple(config["classes"]) + ((NONE_CLASS,) if config.get("reject", False) else ())
        model = ObjectClassifier(len(classes), tuple(config["channels"]), int(config["resolution"]))
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(path, "model", f"does not fit an ObjectClassifier ({err})") from None
    return model.eval(), classes
