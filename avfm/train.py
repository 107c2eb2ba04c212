"""Passive-to-active dense latent distillation (CanViT §5), single process or `torchrun` DDP.

Per optimizer step and scene: two rollouts from a fresh canvas, one F-IID (full scene first) and one
R-IID (random viewpoints throughout), of one length per step as in the reference (2, plus 2 while a coin
lands heads), run together as one batch of 2B scenes.
At every step the canvas predicts the teacher's standardised patch embeddings of the whole scene
and the CLS predicts its standardised CLS (MSE, averaged over steps and over the two rollouts).
Truncated BPTT in chunks of 2 glimpses, AdamW with linear warm-up then constant, gradient clipping.

`Pretrainer` is a `scene3d.train.Trainable`; `train(cfg)` drives it with `scene3d.train.fit` in
`<output_root>/avfm/<name>/` (checkpoints, resume, NaN guard, limits; under DDP rank 0 writes).
Randomness: every step draws from a generator seeded by (seed, step, rank), so an exact resume
needs only the model, the optimizer, the step (and the loss history, for the reported losses).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
import tyro
from torch import Tensor

from avfm.data import (
    SceneSet,
    TargetShards,
    TensorTargets,
    load_scenes,
    precompute_targets,
    write_target_shards,
)
from avfm.glimpse import Viewpoint, sample_rollout_length, sample_viewpoints
from avfm.model import CanViT, build_model
from avfm.self_distillation import SelfDistillationConfig, train_self_distillation
from avfm.teachers import (
    DenseTeacherConfig,
    Teacher,
    build_teacher,
    load_vit_teacher,
    save_vit_teacher,
    train_dense_teacher,
)
from scene3d.config import Range, check
from scene3d.device import pick_device
from scene3d.errors import DataError
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import FitResult, RunConfig, fit


@dataclass
class DataConfig:
    source: Literal["synthetic", "toy", "photos", "folder"] = "synthetic"  # photos: scikit-image's, no labels
    path: str | None = None
    n_train: Annotated[int, Range(1)] = 256
    n_val: Annotated[int, Range(0)] = 64
    resolution: Annotated[int, Range(8, 4096)] = 64
    seed: int = 0


@dataclass
class TeacherConfig:
    """The frozen dense teacher. `self_supervised` (DINO + iBOT, never sees a label) and `supervised` (trained
    on the scenes' dense labels) are trained on the training scenes unless `path` names a saved one."""

    name: Literal["self_supervised", "supervised", "random_vit", "dinov2", "dinov3", "hf"] = "self_supervised"
    path: str | None = None  # an HF model directory, or a saved self_supervised / supervised teacher
    seed: int = 0  # random_vit's
    self_supervised: SelfDistillationConfig = field(default_factory=SelfDistillationConfig)
    supervised: DenseTeacherConfig = field(default_factory=DenseTeacherConfig)


@dataclass
class OptimConfig:
    lr: Annotated[float, Range(0, above=True)] = 1e-3  # paper: 4e-4 at batch 64 for CanViT-B
    warmup_steps: Annotated[int, Range(0)] = 50  # paper: 100k
    weight_decay: Annotated[float, Range(0)] = 1e-4
    betas: Annotated[tuple[float, float], Range(0, 1)] = (0.9, 0.999)
    clip: Annotated[float, Range(0, above=True)] = 1.0


@dataclass
class TrainConfig:
    model: str = "canvit_tiny"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: Annotated[int, Range(1)] = 400
    batch_size: Annotated[int, Range(1)] = 16
    chunk: Annotated[int, Range(1)] = 2
    p_stop: Annotated[float, Range(0, 1, above=True)] = 0.5
    s_min: Annotated[float, Range(0, 1, above=True)] = 0.05
    canvas_grid: Annotated[int | None, Range(1, 1024)] = None  # default: the model config's
    standardizer_scenes: Annotated[int, Range(1)] = 256
    seed: int = 0
    device: str = "auto"
    amp: bool = False  # bf16 autocast for the forward (canvas, RoPE and VPE stay fp32); backward outside
    # --name (default "avfm"), --output-root, --checkpoint-every, --log-every, --max-minutes, ... (scene3d.train);
    # --eval-every N adds the validation loss every N steps (0: only at the end)
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=lambda: RunConfig(log_every=10, eval_every=0, checkpoint_every=100))

    def __post_init__(self) -> None:
        check(self)


# --------------------------------------------------------------------------------------------------


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


def rollout_loss(
    model: CanViT,
    scenes: Tensor,
    target_patches: Tensor,
    target_cls: Tensor,
    first: Viewpoint | None,
    generator: torch.Generator,
    cfg: TrainConfig,
    length: int | None = None,
) -> dict[str, Any]:
    """One rollout over scenes [B, 3, H, W] with TBPTT: backward per chunk of `cfg.chunk` glimpses, the
    state detached between; `first` is the first viewpoint (random when None), `length` the rollout's
    (drawn when None). Gradients of the mean loss over steps are accumulated into the model; returns
    the per-scene losses [B] averaged over steps (`patch`, `cls`) and the length."""
    b = scenes.shape[0]
    length = sample_rollout_length(generator, cfg.chunk, cfg.p_stop) if length is None else length
    state = model.init_state(b, canvas_grid=math.isqrt(target_patches.shape[1]))
    totals = {"patch": torch.zeros(b), "cls": torch.zeros(b)}
    for start in range(0, length, cfg.chunk):
        chunk_loss = 0.0
        for t in range(start, min(start + cfg.chunk, length)):
            vp = first if (t == 0 and first is not None) else sample_viewpoints(b, generator, cfg.s_min)
            vp = vp.to(scenes.device)
            with torch.autocast(scenes.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                state, out = model.step(model.glimpse(scenes, vp), vp, state)
            patch = (out.scene_patches.float() - target_patches).square().mean(dim=(1, 2))
            cls = (out.scene_cls.float() - target_cls).square().mean(dim=1)
            chunk_loss = chunk_loss + (patch + cls).mean() / length
            totals["patch"] += patch.detach().cpu() / length
            totals["cls"] += cls.detach().cpu() / length
        chunk_loss.backward()
        state = state.detach()
    return {**totals, "length": length}


def train_step(
    model: CanViT, scenes: Tensor, patches: Tensor, cls: Tensor, generator, cfg: TrainConfig
) -> dict:
    """Both rollouts (F-IID and R-IID) of one batch, as the reference runs its branches: one length drawn
    per step for both, each branch's loss weighted 1/2. The two branches are independent, so they run as
    one batch of 2B scenes (the same gradients as two passes, half the kernel launches, matmuls twice
    as tall). Accumulates gradients, returns the losses."""
    b = scenes.shape[0]
    first = Viewpoint.cat([Viewpoint.full(b), sample_viewpoints(b, generator, cfg.s_min)])
    both = rollout_loss(model, scenes.repeat(2, 1, 1, 1), patches.repeat(2, 1, 1), cls.repeat(2, 1), first,
                        generator, cfg)
    f = {k: both[k][:b].mean().item() for k in ("patch", "cls")}
    r = {k: both[k][b:].mean().item() for k in ("patch", "cls")}
    return {
        "loss": 0.5 * (f["patch"] + f["cls"] + r["patch"] + r["cls"]),
        "f_iid/patch": f["patch"],
        "f_iid/cls": f["cls"],
        "r_iid/patch": r["patch"],
        "r_iid/cls": r["cls"],
        "glimpses": 2 * both["length"],  # per scene, both branches
    }


def make_teacher(
    cfg: TeacherConfig, train_set: SceneSet, run: RunDir | None, progress: bool = False
) -> Teacher:
    """The configured teacher. `self_supervised` / `supervised` without a path train one on the training
    scenes (once: it is saved as `teacher.safetensors` in the run folder and reloaded on resume; its
    training checkpoints in `teacher/` of the run folder, so a killed teacher training resumes too)."""
    if cfg.name in ("self_supervised", "supervised") and cfg.path is None:
        saved = None if run is None else run.path / "teacher.safetensors"
        if saved is not None and saved.is_file():
            return load_vit_teacher(saved)
        folder = None if run is None else RunDir(run.path / "teacher")
        if cfg.name == "self_supervised":
            teacher, _ = train_self_distillation(train_set.images, cfg.self_supervised, progress, run=folder,
                                                 main_process=_rank() == 0)
        else:
            if train_set.labels is None:
                raise ValueError("the 'supervised' teacher needs dense labels in the training scenes")
            teacher, _ = train_dense_teacher(train_set.images, train_set.labels, train_set.num_classes,
                                             train_set.scene_class, cfg.supervised, progress, run=folder,
                                             main_process=_rank() == 0)
        if saved is not None and _rank() == 0:
            save_vit_teacher(saved, teacher)
        return teacher
    if cfg.name == "random_vit":
        return build_teacher("random_vit", seed=cfg.seed)
    return build_teacher(cfg.name, path=cfg.path)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def set_lr(opt: torch.optim.Optimizer, cfg: OptimConfig, step: int) -> float:
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def average_gradients(model: torch.nn.Module) -> None:
    """All-reduce (mean) gradients across DDP ranks; a no-op in a single process."""
    if _world() == 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= _world()


def assert_replicas_in_sync(model: torch.nn.Module) -> None:
    """Under DDP, check every rank holds the same parameters (one all-gather of a checksum)."""
    if _world() == 1:
        return
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(_world())]
    dist.all_gather(gathered, checksum)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"DDP replicas diverged: parameter checksums {[g.item() for g in gathered]}")


def training_targets(teacher: Teacher, train_set: SceneSet, grid: int, run: RunDir | None
                     ) -> TargetShards | TensorTargets:
    """Teacher targets of the training scenes, computed once into fp16 shards in the run folder
    (`targets/`) and streamed from there (also on resume); in memory when there is no run folder.
    Always fp16-rounded, so a resumed run sees exactly the targets of the first one."""
    if run is None:
        patches, cls = precompute_targets(teacher, train_set.images, grid)
        return TensorTargets(patches.half().float(), cls.half().float())
    folder = run.path / "targets"
    if _rank() == 0:
        write_target_shards(teacher, train_set.images, grid, folder)
    if _world() > 1:
        dist.barrier()
    targets = TargetShards(folder)
    if len(targets) != len(train_set) or targets.patch_shape[0] != grid * grid:
        raise DataError(folder, "shard_*.safetensors", f"targets for {len(targets)} scenes of {targets.patch_shape[0]} "
                        f"cells, expected {len(train_set)} of {grid * grid}: delete the folder to recompute")
    return targets


def setup(cfg: TrainConfig, run: RunDir | None):
    """Data, teacher, standardised targets and the model (standardizer fitted)."""
    scenes = load_scenes(
        cfg.data.source, cfg.data.n_train + cfg.data.n_val, cfg.data.resolution, cfg.data.seed, cfg.data.path
    )
    train_set, val_set = scenes.split(cfg.data.n_train)
    teacher = make_teacher(cfg.teacher, train_set, run, cfg.run.progress and _rank() == 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        overrides = {"teacher_dim": teacher.dim}
        if cfg.canvas_grid is not None:
            overrides["canvas_grid"] = cfg.canvas_grid
        model = build_model(cfg.model, **overrides)
    targets = training_targets(teacher, train_set, model.cfg.canvas_grid, run)
    model.fit_standardizer(*targets[torch.arange(min(cfg.standardizer_scenes, len(train_set)))])
    return model, teacher, train_set, val_set, targets


class Pretrainer:
    """CanViT pretraining as a `scene3d.train.Trainable`. Step `step` (from 1) draws its batch and
    rollouts from `step_generator(seed, step - 1, rank)` and runs TBPTT's backward passes itself
    (`loss` returns the loss without grad), then averages gradients across DDP ranks, clips them and
    sets the learning rate, all before the guard checks them; `apply` is the optimizer step."""

    name = "avfm"

    def __init__(self, cfg: TrainConfig, model: CanViT, teacher: Teacher, train_set: SceneSet, val_set: SceneSet,
                 targets: TargetShards | TensorTargets, device: torch.device):
        self.cfg, self.model, self.teacher, self.device = cfg, model, teacher, device
        self.train_set, self.val_set, self.targets = train_set, val_set, targets
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
        )
        self.losses: list[float] = []  # per step, since the first (restored on resume)

    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        cfg, model = self.cfg, self.model
        g = step_generator(cfg.seed, step - 1, _rank())
        idx = torch.randint(len(self.train_set), (cfg.batch_size,), generator=g)
        scenes = self.train_set.images[idx].to(self.device)
        std_patches, std_cls = model.standardize(*(t.to(self.device) for t in self.targets[idx]))
        self.optimizer.zero_grad(set_to_none=True)
        info = train_step(model, scenes, std_patches, std_cls, g, cfg)
        average_gradients(model)
        info["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip).item()
        info["lr"] = set_lr(self.optimizer, cfg.optim, step - 1)
        self.losses.append(info["loss"])
        # Under DDP every rank sees the same averaged gradients, so all ranks skip (or stop) together.
        return torch.tensor(info["loss"]), {(f"train/{k}" if "/" in k else k): v for k, v in info.items()}

    def guarded_parameters(self):
        return self.model.named_parameters()

    def apply(self, step: int) -> dict[str, float]:
        self.optimizer.step()
        return {}

    def validate(self) -> dict[str, float]:
        if not len(self.val_set):
            return {}
        val = validation_loss(self.model, self.val_set, self.teacher, self.cfg, self.device)
        return {f"val/{k}": v for k, v in val.items()}

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        """The first and last 5 training losses and the validation loss."""
        return {"first_losses": self.losses[:5], "last_losses": self.losses[-5:], **self.validate()}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "losses": torch.tensor(self.losses, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.losses = state["losses"].tolist()

    def checkpoint_config(self) -> dict[str, Any]:
        return config_to_dict(self.cfg)


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) a pretraining run in `<output_root>/avfm/<name>/`: returns run_dir, steps,
    steps_this_run, seconds (of training), the first and last 5 losses and, when the schedule is
    complete, the validation loss (`val/...`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend)
    rank, device = _rank(), pick_device(cfg.device)
    if device.type == "cuda" and _world() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    run = cfg.run.open("avfm", "avfm")
    model, teacher, train_set, val_set, targets = setup(cfg, run)
    model.to(device).train()
    trainer = Pretrainer(cfg, model, teacher, train_set, val_set, targets, device)
    result = fit(trainer, run, cfg.run, cfg.steps, job_config=cfg, main_process=rank == 0)
    assert_replicas_in_sync(model)
    return {
        "run_dir": str(run.path),
        "steps": result.steps,
        "steps_this_run": result.steps_this_run,
        "seconds": result.train_seconds,
        "first_losses": trainer.losses[:5],
        "last_losses": trainer.losses[-5:],
        **{k: v for k, v in result.metrics.items() if k.startswith("val/")},
    }


@torch.no_grad()
def validation_loss(model: CanViT, val_set: SceneSet, teacher: Teacher, cfg: TrainConfig, device) -> dict:
    """Mean standardised patch / CLS MSE over 4 glimpses of F-IID and R-IID on held-out scenes."""
    was_training = model.training
    model.eval()
    patches, cls = precompute_targets(teacher, val_set.images, model.cfg.canvas_grid)
    patches, cls = model.standardize(patches, cls)
    g = torch.Generator().manual_seed(cfg.seed + 7)
    out = {}
    for name, first in (("f_iid", True), ("r_iid", False)):
        b = len(val_set)
        vps = [sample_viewpoints(b, g, cfg.s_min) for _ in range(4)]
        if first:
            vps[0] = Viewpoint.full(b)
        _, outs = model.rollout(val_set.images.to(device), [v.to(device) for v in vps])
        out[f"{name}/patch"] = sum(F.mse_loss(o.scene_patches.cpu(), patches).item() for o in outs) / 4
        out[f"{name}/cls"] = sum(F.mse_loss(o.scene_cls.cpu(), cls).item() for o in outs) / 4
    model.train(was_training)
    return out
