"""Dense teachers behind one interface: `teacher(images [B, 3, H, W] in [0, 1]) -> TeacherOutput`
with patch embeddings [B, h*w, D], a CLS embedding [B, D] and the patch grid (h, w).

Members (`TEACHERS`): HF transformers DINOv2 / DINOv2-with-registers / DINOv3 ViT loaded from a
local directory (`hf`, `dinov2`, `dinov3`), a seeded random ViT (`random_vit`), and small ViTs trained
here and saved: `self_supervised` (DINO + iBOT, no labels: `avfm.self_distillation`) and `supervised`
(trained on the synthetic scenes' dense labels, see `DenseTeacherTrainer`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from avfm.glimpse import IMAGENET_MEAN, IMAGENET_STD
from avfm.vit import ViT, ViTConfig, interpolate_tokens
from scene3d.checkpoint import load_checkpoint, save_checkpoint
from scene3d.config import Range
from scene3d.errors import CheckpointError, DataError
from scene3d.runs import RunDir
from scene3d.train import FitResult, RunConfig, fit


@dataclass
class TeacherOutput:
    patches: Float[Tensor, "B N D"]
    cls: Float[Tensor, "B D"]
    grid: tuple[int, int]

    def resampled(self, grid: int) -> Float[Tensor, "B G2 D"]:
        """Patch embeddings resampled to grid x grid (identity when the grid already matches)."""
        return interpolate_tokens(self.patches, self.grid, grid)


class Teacher(nn.Module):
    """Frozen dense teacher. Subclasses implement `encode(normalised images)`."""

    dim: int
    patch_size: int

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def encode(self, images: Tensor) -> TeacherOutput:
        raise NotImplementedError

    def forward(self, images: Float[Tensor, "B 3 H W"]) -> TeacherOutput:
        return self.encode((images.float() - self.mean) / self.std)


class HFTeacher(Teacher):
    """A transformers DINOv2 / DINOv2-with-registers / DINOv3 ViT from a local directory
    (`save_pretrained` layout). Outputs follow the model's final LayerNorm, like the paper's targets."""

    def __init__(self, path: str | Path):
        from transformers import AutoConfig, AutoModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise DataError(path, "config.json", "no HF model directory here (config.json missing)")
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        prep = path / "preprocessor_config.json"
        if prep.is_file():
            data = json.loads(prep.read_text())
            mean, std = tuple(data.get("image_mean", mean)), tuple(data.get("image_std", std))
        super().__init__(mean, std)
        try:  # .safetensors only: pickled .bin weights are never loaded
            model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
        except OSError as err:
            raise DataError(path, "model.safetensors", f"cannot load the weights ({err})") from None
        self.model = model.eval().requires_grad_(False)
        self.dim = config.hidden_size
        self.patch_size = config.patch_size
        self.n_registers = getattr(config, "num_register_tokens", 0) or 0

    def encode(self, images: Tensor) -> TeacherOutput:
        hidden = self.model(pixel_values=images).last_hidden_state
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        return TeacherOutput(hidden[:, 1 + self.n_registers :], hidden[:, 0], (h, w))


class ViTTeacher(Teacher):
    """Our ViT as a teacher (`avfm.vit.ViT` with a final LayerNorm)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.vit = ViT(cfg)
        self.dim, self.patch_size = cfg.dim, cfg.patch_size

    def encode(self, images: Tensor) -> TeacherOutput:
        patches, cls, grid = self.vit(images)
        return TeacherOutput(patches, cls, grid)


def random_vit_teacher(
    seed: int = 0, dim: int = 96, depth: int = 4, heads: int = 3, patch_size: int = 8
) -> ViTTeacher:
    """A randomly initialised ViT, the same for the same seed (layerscale 1 so features are not ~identity)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = ViTConfig(dim=dim, depth=depth, heads=heads, patch_size=patch_size, layerscale_init=1.0)
        teacher = ViTTeacher(cfg)
    return teacher.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# A small dense teacher trained here on the synthetic scenes' labels


@dataclass
class DenseTeacherConfig:
    """Training of the small dense teacher (CPU-sized defaults)."""

    dim: Annotated[int, Range(1)] = 96
    depth: Annotated[int, Range(1)] = 4
    heads: Annotated[int, Range(1)] = 3
    patch_size: Annotated[int, Range(1)] = 8
    steps: Annotated[int, Range(1)] = 300
    batch_size: Annotated[int, Range(1)] = 16
    lr: Annotated[float, Range(0, above=True)] = 1e-3
    weight_decay: Annotated[float, Range(0)] = 0.05
    seed: int = 0


class DenseTeacherNet(nn.Module):
    """ViT + a linear head per patch predicting the label of each of its p x p pixels, and a linear
    head on the CLS predicting the scene class."""

    def __init__(self, cfg: DenseTeacherConfig, num_classes: int, num_scene_classes: int):
        super().__init__()
        vit = ViTConfig(cfg.dim, cfg.depth, cfg.heads, patch_size=cfg.patch_size, layerscale_init=0.1)
        self.teacher = ViTTeacher(vit)
        self.num_classes = num_classes
        self.pixel_head = nn.Linear(cfg.dim, num_classes * cfg.patch_size**2)
        self.scene_head = nn.Linear(cfg.dim, max(num_scene_classes, 1))

    def loss(self, images: Tensor, labels: Tensor, scene_class: Tensor | None) -> Tensor:
        out = self.teacher(images)
        p, (h, w) = self.teacher.patch_size, out.grid
        logits = self.pixel_head(out.patches).view(-1, h, w, self.num_classes, p, p)
        logits = logits.permute(0, 3, 1, 4, 2, 5).reshape(-1, self.num_classes, h * p, w * p)
        loss = F.cross_entropy(logits, labels)
        if scene_class is not None:
            loss = loss + F.cross_entropy(self.scene_head(out.cls), scene_class)
        return loss


class DenseTeacherTrainer:
    """Training of the small dense teacher as a `scene3d.train.Trainable`: per step a batch of images
    [B, 3, H, W] drawn with its own generator, per-pixel (and scene-class) cross-entropy, AdamW with a
    linear warm-up over the first tenth of the steps, gradients clipped to norm 1. A checkpoint's
    "model" is the teacher's own state, so `load_vit_teacher` reads a run's checkpoints too."""

    name = "teacher"

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int, scene_class: Tensor | None = None,
                 cfg: DenseTeacherConfig | None = None):
        self.cfg = cfg = cfg or DenseTeacherConfig()
        self.images, self.labels, self.scene_class = images, labels, scene_class
        torch.manual_seed(cfg.seed)  # the initialisation
        n_scene = int(scene_class.max()) + 1 if scene_class is not None else 1
        self.net = DenseTeacherNet(cfg, num_classes, n_scene)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.losses: list[float] = []  # per step, since the first (restored on resume)

    @property
    def teacher(self) -> ViTTeacher:
        return self.net.teacher

    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg
        idx = torch.randint(len(self.images), (c.batch_size,), generator=self.generator)
        lr = c.lr * min(1.0, step / max(1, c.steps // 10))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        scene_class = None if self.scene_class is None else self.scene_class[idx]
        loss = self.net.loss(self.images[idx], self.labels[idx], scene_class)
        self.losses.append(loss.item())
        return loss, {"loss": self.losses[-1], "lr": lr}

    def guarded_parameters(self):
        return self.net.named_parameters()

    def apply(self, step: int) -> dict[str, float]:
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.optimizer.step()
        return {}

    def validate(self) -> dict[str, float]:
        return {}

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        return {"first_losses": self.losses[:5], "last_losses": self.losses[-5:]}

    def state_dict(self) -> dict[str, Any]:
        heads = {k: v for k, v in self.net.state_dict().items() if not k.startswith("teacher.")}
        return {"model": self.teacher.state_dict(), "heads": heads, "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "losses": torch.tensor(self.losses, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict({**{f"teacher.{k}": v for k, v in state["model"].items()}, **state["heads"]})
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.losses = state["losses"].tolist()

    def checkpoint_config(self) -> dict[str, Any]:
        return {"vit": asdict(self.teacher.vit.cfg), "teacher": asdict(self.cfg)}


def train_dense_teacher(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    scene_class: Tensor | None = None,
    cfg: DenseTeacherConfig | None = None,
    progress: bool = False,
    run: RunDir | None = None,
    main_process: bool = True,
) -> tuple[ViTTeacher, list[float]]:
    """Train the small dense teacher on images [N, 3, H, W] and labels [N, H, W]; returns it frozen
    and the loss per step. With a `run` folder it checkpoints there and resumes its newest checkpoint
    (`main_process` False, as on DDP ranks > 0: nothing is written)."""
    trainer = DenseTeacherTrainer(images, labels, num_classes, scene_class, cfg)
    config = RunConfig(log_every=10, eval_every=0, checkpoint_every=100, progress=progress)
    fit(trainer, run, config, trainer.cfg.steps, job_config=trainer.cfg, main_process=main_process)
    return trainer.teacher.eval().requires_grad_(False), trainer.losses


def save_vit_teacher(path: str | Path, teacher: ViTTeacher) -> Path:
    return save_checkpoint(path, {"model": teacher.state_dict()}, {"vit": asdict(teacher.vit.cfg)})


def load_vit_teacher(path: str | Path) -> ViTTeacher:
    state, config = load_checkpoint(path)
    if not config or "vit" not in config:
        raise CheckpointError(path, "vit", "not a ViT teacher checkpoint (no 'vit' config)")
    teacher = ViTTeacher(ViTConfig(**config["vit"]))
    try:
        teacher.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(path, "model", f"does not fit the ViT config: {err}") from err
    return teacher.eval().requires_grad_(False)


TEACHERS = {
    "hf": HFTeacher,
    "dinov2": HFTeacher,
    "dinov3": HFTeacher,
    "random_vit": random_vit_teacher,
    "self_supervised": load_vit_teacher,  # a saved teacher of avfm.self_distillation
    "supervised": load_vit_teacher,  # a saved DenseTeacherTrainer teacher
}


def build_teacher(name: str, **kwargs) -> Teacher:
    """`build_teacher("dinov3", path=...)`, `build_teacher("random_vit", seed=0)`,
    `build_teacher("self_supervised", path=...)`."""
    if name not in TEACHERS:
        raise KeyError(f"unknown teacher '{name}'; known: {sorted(TEACHERS)}")
    return TEACHERS[name](**kwargs)
