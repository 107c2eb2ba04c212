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

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm import tqdm

from scene3d.checkpoint import load_checkpoint
from scene3d.data.synthetic import OBJECT_TYPES
from scene3d.diffusion.data import ObjectImages, ObjectViews, render_objects
from scene3d.errors import CheckpointError
from scene3d.runs import RunDir

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
    reject: bool = True  # add the `none` class, trained on `clutter_images` (as many as one object class)
    augment: bool = True  # random desaturation and blur of object renders (hflip always)


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
    """Train on renders (hflip, optional desaturation and blur) plus, with `reject`, clutter images
    labelled `none`; returns the model and {'val_accuracy': ...} (over objects and clutter)."""
    run = run or RunDir.create("classifier", config.name, root=config.root)
    run.save_config(config)
    data, val = (_labelled_images(config, n, config.seed + k)
                 for k, n in enumerate((config.n_objects_per_class, config.n_val_objects_per_class)))
    torch.manual_seed(config.seed)
    model = ObjectClassifier(len(config.classes) + config.reject, config.channels, config.resolution)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.steps)
    g = torch.Generator().manual_seed(config.seed)
    for step in tqdm(range(config.steps), desc="classifier", dynamic_ncols=True):
        idx = torch.randint(len(data.images), (config.batch_size,), generator=g)
        x, y = data.images[idx], data.labels[idx]
        x = torch.where((torch.rand(len(idx), generator=g) < 0.5)[:, None, None, None], x.flip(-1), x)
        if config.augment:
            x = torch.where((y < len(config.classes))[:, None, None, None], augment(x, g), x)
        loss = F.cross_entropy(model(x), y)
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
