"""A self-supervised dense teacher trained here, never seeing a label: DINO self-distillation on the CLS
(Caron et al. 2021) plus iBOT's masked patch self-distillation (Zhou et al. 2022), as DINOv2 combines them.

Per step and image: two global crops (`global_px`) and `local_crops` local crops (`local_px`) with DINO's
augmentations (`avfm.augment`). The teacher, an exponential moving average of the student, sees the
global crops; the student sees all crops, its global crops with a random share of the patches replaced
by a learned mask token (for half the images, as iBOT). Both project through the same head (MLP,
L2-normalised bottleneck, weight-normalised prototypes). Losses:

- DINO: cross-entropy between the teacher's sharpened CLS distribution of one global crop (Sinkhorn-Knopp
  normalised, as DINOv2; or DINO's centring with momentum 0.9, `centering="centre"`) and the student's CLS
  distribution of every other crop;
- iBOT: the same between teacher and student patch distributions at the masked patches of each global crop;
- KoLeo (DINOv2) on the student's global-crop CLS features, weight 0.1.

Schedules as the authors': learning rate warm-up then cosine, weight decay cosine 0.04 -> 0.4, teacher
momentum cosine 0.996 -> 1, teacher temperature warm-up 0.04 -> 0.07, the prototypes frozen at first.
Sizes are scaled to 64 px scenes (`SelfDistillationConfig`); deviations: random (not block-wise) masks,
one shared head for CLS and patches (DINOv2's default).

`SelfDistillationTrainer` is a `scene3d.train.Trainable`; a checkpoint's "model" is the teacher ViT's
state, so `avfm.teachers.load_vit_teacher` reads the result.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from avfm import augment
from avfm.teachers import ViTTeacher
from avfm.vit import ViTConfig
from scene3d.config import Range, check
from scene3d.runs import RunDir
from scene3d.train import FitResult, RunConfig, fit


@dataclass
class SelfDistillationConfig:
    """DINO + iBOT at CPU scale: a ViT of width 96 and depth 4 (patch 8) on 64 px scenes."""

    dim: Annotated[int, Range(1)] = 96
    depth: Annotated[int, Range(1)] = 4
    heads: Annotated[int, Range(1)] = 3
    patch_size: Annotated[int, Range(1)] = 8
    steps: Annotated[int, Range(1)] = 1000
    batch_size: Annotated[int, Range(1)] = 32
    lr: Annotated[float, Range(0, above=True)] = 1e-3  # peak, after a linear warm-up over warmup_frac of the steps
    min_lr: Annotated[float, Range(0)] = 1e-6
    warmup_frac: Annotated[float, Range(0, 1)] = 0.1
    weight_decay: tuple[float, float] = (0.04, 0.4)  # cosine from the first to the second
    momentum: tuple[float, float] = (0.996, 1.0)  # the teacher's EMA momentum, cosine
    teacher_temp: tuple[float, float] = (0.04, 0.07)  # linear warm-up over temp_warmup_frac of the steps
    temp_warmup_frac: Annotated[float, Range(0, 1)] = 0.3
    student_temp: Annotated[float, Range(0, above=True)] = 0.1
    center_momentum: Annotated[float, Range(0, 1)] = 0.9
    prototypes: Annotated[int, Range(2)] = 1024  # DINO: 65536
    head_hidden: Annotated[int, Range(1)] = 512  # DINO: 2048
    head_bottleneck: Annotated[int, Range(1)] = 128  # DINO: 256
    head_batch_norm: bool = False  # DINO's use_bn_in_head (its default for ViTs: off)
    freeze_prototypes_frac: Annotated[float, Range(0, 1)] = 0.01  # DINO: the first of 100 epochs
    clip: Annotated[float, Range(0, above=True)] = 3.0
    global_px: Annotated[int, Range(8)] = 64
    global_scale: tuple[float, float] = (0.32, 1.0)  # DINOv2's
    local_px: Annotated[int, Range(8)] = 32
    local_crops: Annotated[int, Range(0)] = 4
    local_scale: tuple[float, float] = (0.05, 0.32)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels at DINO's 224 px globals / 96 px locals; scaled to ours
    mask_ratio: tuple[float, float] = (0.1, 0.5)  # iBOT: of the patches of a masked global crop
    mask_probability: Annotated[float, Range(0, 1)] = 0.5
    ibot_weight: Annotated[float, Range(0)] = 1.0
    koleo_weight: Annotated[float, Range(0)] = 0.1  # DINOv2's
    centering: Literal["sinkhorn_knopp", "centre"] = "sinkhorn_knopp"  # DINOv2's / DINO's and iBOT's
    seed: int = 0

    def __post_init__(self) -> None:
        check(self)


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the last dim of [..., D] (every leading position is a sample)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class ProjectionHead(nn.Module):
    """DINO's head: 3-layer MLP (GELU) -> L2-normalised bottleneck -> weight-normalised prototypes (norm 1)."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, prototypes: int, batch_norm: bool = False):
        super().__init__()
        norm = (lambda: TokenBatchNorm(hidden)) if batch_norm else nn.Identity
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), norm(), nn.GELU(), nn.Linear(hidden, hidden), norm(),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Parameter(torch.empty(prototypes, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: Float[Tensor, "... D"]) -> Float[Tensor, "... K"]:
        return F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(self.prototypes, dim=-1))


class SelfDistillationNet(nn.Module):
    """Backbone (`ViTTeacher`) + projection head + the iBOT mask token."""

    def __init__(self, cfg: SelfDistillationConfig):
        super().__init__()
        self.backbone = ViTTeacher(ViTConfig(cfg.dim, cfg.depth, cfg.heads, patch_size=cfg.patch_size,
                                             layerscale_init=0.1))
        self.head = ProjectionHead(cfg.dim, cfg.head_hidden, cfg.head_bottleneck, cfg.prototypes, cfg.head_batch_norm)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))

    def forward(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """CLS and patch logits ([B, K], [B, N, K]) and the backbone's CLS [B, D] of images [B, 3, H, W]
        (normalised as the teacher does); `mask` [B, N] (bool) replaces those patches by the mask token."""
        vit = self.backbone.vit
        patches, cls, _ = vit((images - self.backbone.mean) / self.backbone.std, mask=mask, mask_token=self.mask_token)
        return self.head(cls), self.head(patches), cls


def cosine(start: float, end: float, step: int, steps: int) -> float:
    """Cosine from `start` at step 0 to `end` at step `steps`."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(step, steps) / max(1, steps)))


def centred_sharpened(logits: Tensor, center: Tensor, temp: float) -> Tensor:
    """DINO's teacher targets: softmax((logits - centre) / temp) per row of [M, K]."""
    return F.softmax((logits - center) / temp, dim=-1)


@torch.no_grad()
def sinkhorn_knopp(logits: Float[Tensor, "M K"], temp: float, iterations: int = 3) -> Float[Tensor, "M K"]:
    """DINOv2's teacher targets: exp(logits / temp) normalised alternately over the prototypes (each used
    equally over the M rows) and over each row (a distribution), as SwAV; rows sum to 1."""
    q = torch.exp((logits - logits.max()) / temp).t().double()  # [K, M]
    k, m = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * m
    return (q * m).t().to(logits.dtype)


def koleo(x: Float[Tensor, "B D"], eps: float = 1e-8) -> Tensor:
    """Kozachenko-Leonenko entropy term of DINOv2: -mean log distance of each L2-normalised row to its
    nearest other row (spreads the features over the sphere)."""
    x = F.normalize(x, dim=-1, eps=eps)
    dots = x @ x.t()
    dots.fill_diagonal_(-2.0)
    nearest = dots.argmax(dim=1)
    return -torch.log(F.pairwise_distance(x, x[nearest], eps=eps) + eps).mean()


def cross_entropy(target: Tensor, student_logits: Tensor, temp: float) -> Tensor:
    """Per-row H(target, softmax(student / temp)): [..., K] -> [...]."""
    return -(target * F.log_softmax(student_logits / temp, dim=-1)).sum(-1)


class SelfDistillationTrainer:
    """DINO + iBOT training on images [N, 3, H, W] in [0, 1] (no labels)."""

    name = "self_distillation"

    def __init__(self, images: Tensor, cfg: SelfDistillationConfig | None = None):
        self.cfg = cfg = cfg or SelfDistillationConfig()
        self.images = images
        torch.manual_seed(cfg.seed)  # the initialisation
        self.student = SelfDistillationNet(cfg)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        decay = [p for n, p in self.student.named_parameters() if p.ndim > 1 and n != "mask_token"]
        rest = [p for n, p in self.student.named_parameters() if not (p.ndim > 1 and n != "mask_token")]
        self.optimizer = torch.optim.AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.center = torch.zeros(1, cfg.prototypes)
        self.patch_center = torch.zeros(1, cfg.prototypes)
        self.losses: list[float] = []

    @property
    def vit_teacher(self) -> ViTTeacher:
        """The EMA teacher's backbone: the dense teacher this training produces."""
        return self.teacher.backbone

    def schedules(self, step: int) -> dict[str, float]:
        c = self.cfg
        warmup = max(1, round(c.warmup_frac * c.steps))
        lr = c.lr * step / warmup if step <= warmup else cosine(c.lr, c.min_lr, step - warmup, c.steps - warmup)
        temp_steps = max(1, round(c.temp_warmup_frac * c.steps))
        temp = c.teacher_temp[0] + (c.teacher_temp[1] - c.teacher_temp[0]) * min(1.0, step / temp_steps)
        return {"lr": lr, "weight_decay": cosine(*c.weight_decay, step, c.steps),
                "momentum": cosine(*c.momentum, step, c.steps), "teacher_temp": temp}

    def crops(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """DINO's views: global crop 1 always blurred, global crop 2 blurred with p 0.1 and solarised with
        p 0.2, local crops blurred with p 0.5; all colour-jittered and greyscaled at random."""
        c, g = self.cfg, self.generator

        def view(size: int, scale, blur: float, solar: float, sigma_at: int) -> Tensor:
            x = augment.random_resized_crop(images, size, scale, g)
            x = augment.random_greyscale(augment.colour_jitter(x, g), g)
            sigma = tuple(s * size / sigma_at for s in c.blur_sigma)
            x = augment.gaussian_blur(x, g, blur, sigma)
            return augment.solarize(x, g, solar) if solar > 0 else x

        globals_ = [view(c.global_px, c.global_scale, 1.0, 0.0, 224), view(c.global_px, c.global_scale, 0.1, 0.2, 224)]
        locals_ = [view(c.local_px, c.local_scale, 0.5, 0.0, 96) for _ in range(c.local_crops)]
        return globals_, locals_

    def masks(self, b: int, n: int) -> Tensor:
        """[B, N] bool: for a share `mask_probability` of the images, a ratio in `mask_ratio` of the patches."""
        c, g = self.cfg, self.generator
        ratio = augment.uniform(b, *c.mask_ratio, g) * augment.chance(b, c.mask_probability, g)
        count = (ratio * n).round().long()
        order = torch.rand(b, n, generator=g).argsort(dim=1)
        return order < count[:, None]

    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg
        s = self.schedules(step)
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = s["lr"]
            group["weight_decay"] = s["weight_decay"] if i == 0 else 0.0
        self.optimizer.zero_grad(set_to_none=True)
        idx = torch.randint(len(self.images), (c.batch_size,), generator=self.generator)
        globals_, locals_ = self.crops(self.images[idx])
        b, n = c.batch_size, (c.global_px // c.patch_size) ** 2
        masks = [self.masks(b, n) for _ in globals_]
        with torch.no_grad():
            t_cls, t_patch, _ = self.teacher(torch.cat(globals_))
            t_patch = t_patch[torch.cat(masks)]  # [M, K]: the masked patches of both global crops
            self._teacher_cls, self._teacher_patch = t_cls, t_patch
            if c.centering == "sinkhorn_knopp":
                t_cls = sinkhorn_knopp(t_cls, s["teacher_temp"])
                t_patch = sinkhorn_knopp(t_patch, s["teacher_temp"]) if len(t_patch) else t_patch
            else:
                t_cls = centred_sharpened(t_cls, self.center, s["teacher_temp"])
                t_patch = centred_sharpened(t_patch, self.patch_center, s["teacher_temp"])
        s_cls, s_patch, s_feat = self.student(torch.cat(globals_), torch.cat(masks))
        t_cls, s_global = t_cls.chunk(2), list(s_cls.chunk(2))
        s_local = list(self.student(torch.cat(locals_))[0].chunk(len(locals_))) if locals_ else []
        dino, pairs = 0.0, 0
        for i, target in enumerate(t_cls):
            for j, student in enumerate(s_global + s_local):
                if i != j:
                    dino = dino + cross_entropy(target, student, c.student_temp).mean()
                    pairs += 1
        dino = dino / pairs
        flat = torch.cat(masks)
        ibot = cross_entropy(t_patch, s_patch[flat], c.student_temp)  # [M]
        # each image's masked patches weigh 1 / their count, averaged over all images (iBOT / DINOv2)
        per_image = flat.sum(1, keepdim=True).expand_as(flat)[flat].clamp(min=1).float()
        ibot = (ibot / per_image).sum() / len(flat)
        spread = sum(koleo(f) for f in s_feat.chunk(2)) if c.koleo_weight > 0 else torch.zeros(())
        loss = dino + c.ibot_weight * ibot + c.koleo_weight * spread
        self.losses.append(loss.item())
        return loss, {"loss": self.losses[-1], "dino": float(dino.detach()), "ibot": float(ibot.detach()),
                      "koleo": float(spread.detach()), **s}

    def guarded_parameters(self):
        return self.student.named_parameters()

    @torch.no_grad()
    def apply(self, step: int) -> dict[str, float]:
        c = self.cfg
        if step <= c.freeze_prototypes_frac * c.steps:
            self.student.head.prototypes.grad = None
        for p in self.student.parameters():  # DINO clips each parameter's gradient norm on its own
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_(p, c.clip)
        self.optimizer.step()
        m = self.schedules(step)["momentum"]
        for ps, pt in zip(self.student.parameters(), self.teacher.parameters(), strict=True):
            pt.mul_(m).add_(ps.detach(), alpha=1 - m)
        if c.centering == "centre":  # DINO's centres; Sinkhorn-Knopp needs none
            mom = c.center_momentum
            self.center.mul_(mom).add_(self._teacher_cls.mean(0, keepdim=True), alpha=1 - mom)
            if len(self._teacher_patch):
                self.patch_center.mul_(mom).add_(self._teacher_patch.mean(0, keepdim=True), alpha=1 - mom)
        return {}

    def validate(self) -> dict[str, float]:
        return {}

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        return {"first_losses": self.losses[:5], "last_losses": self.losses[-5:]}

    def state_dict(self) -> dict[str, Any]:
        teacher_rest = {k: v for k, v in self.teacher.state_dict().items() if not k.startswith("backbone.")}
        return {"model": self.vit_teacher.state_dict(), "teacher": teacher_rest,
                "student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                "center": self.center, "patch_center": self.patch_center, "generator": self.generator.get_state(),
                "losses": torch.tensor(self.losses, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict({**{f"backbone.{k}": v for k, v in state["model"].items()}, **state["teacher"]})
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.center.copy_(state["center"])
        self.patch_center.copy_(state["patch_center"])
        self.generator.set_state(state["generator"])
        self.losses = state["losses"].tolist()

    def checkpoint_config(self) -> dict[str, Any]:
        return {"vit": asdict(self.vit_teacher.vit.cfg), "teacher": asdict(self.cfg)}


def train_self_distillation(
    images: Tensor, cfg: SelfDistillationConfig | None = None, progress: bool = False, run: RunDir | None = None,
    main_process: bool = True,
) -> tuple[ViTTeacher, list[float]]:
    """Train the self-supervised teacher on images [N, 3, H, W]; returns the EMA teacher's ViT frozen and the
    loss per step. With a `run` folder it checkpoints there and resumes its newest checkpoint."""
    trainer = SelfDistillationTrainer(images, cfg)
    config = RunConfig(log_every=10, eval_every=0, checkpoint_every=100, progress=progress)
    fit(trainer, run, config, trainer.cfg.steps, job_config=trainer.cfg, main_process=main_process)
    return trainer.vit_teacher.eval().requires_grad_(False), trainer.losses
