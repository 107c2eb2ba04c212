"""Evaluation of a pretrained CanViT with frozen probes: mIoU and top-1 per glimpse and per policy,
next to the teacher's probes on the full scene at high resolution, on an input-matched
low-resolution full image (the pixels of one glimpse) and at matched FLOPs (one glimpse's FLOPs).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from avfm.coords import flat_grid
from avfm.data import SceneSet, load_scenes, precompute_targets
from avfm.flops import canvit_flops, vit_flops
from avfm.glimpse import Viewpoint, build_policy, sample_viewpoints
from avfm.model import CanViT, State
from avfm.pretrained import load_pretrained
from avfm.probes import entropy_map, fit_cls_probe, fit_seg_probe, top1
from avfm.teachers import Teacher, ViTTeacher, build_teacher
from avfm.train import DataConfig, OptimConfig, TeacherConfig, TrainConfig, setup
from scene3d.checkpoint import restoring
from scene3d.config import Range, check
from scene3d.errors import CheckpointError
from scene3d.metrics import miou
from scene3d.runs import OUTPUTS, RunDir
from scene3d.train import RunConfig


@dataclass
class EvalConfig:
    run_dir: str = "outputs/avfm/avfm"
    policies: tuple[str, ...] = ("c2f", "eg_c2f", "full_first", "random", "repeated_full", "f2c")
    steps: Annotated[int, Range(1)] = 10
    probe_rollout: Annotated[int, Range(1)] = 10  # R-IID glimpses per probe-training scene (as the paper)
    probe_steps: Annotated[int, Range(1)] = 400
    canvas_grid: Annotated[int | None, Range(1, 1024)] = None
    seed: int = 0
    name: str = "eval"  # results go to <output_root>/avfm_eval/<name>/
    output_root: Path = OUTPUTS
    canvit: Path | None = None
    """A published CanViT checkpoint folder (`avfm.load_pretrained`) evaluated instead of the run's model, on the
    scenes of `data` (run_dir unused)."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    teacher_path: str | None = None
    """With --canvit: the HF directory of the teacher it distils (DINOv3) for the teacher baselines and the
    heads' error; without one, probes only."""

    def __post_init__(self) -> None:
        check(self)


def train_config_from_dict(d: dict) -> TrainConfig:
    """Rebuild the nested `TrainConfig` saved beside a run (its config.json)."""
    from avfm.teachers import DenseTeacherConfig

    d = dict(d)
    if "run" not in d:
        raise ValueError("written by an older version, with the run options (run_name, out_root, ...) at its top "
                         "level: move them into a 'run' section with this version's names (name, output_root, ...)")
    teacher = dict(d.pop("teacher"))
    teacher["train"] = DenseTeacherConfig(**teacher["train"])
    optim = dict(d.pop("optim"))
    optim["betas"] = tuple(optim["betas"])
    run = dict(d.pop("run"))
    run["output_root"] = Path(run["output_root"])
    return TrainConfig(data=DataConfig(**d.pop("data")), teacher=TeacherConfig(**teacher), optim=OptimConfig(**optim),
                       run=RunConfig(**run), **d)


def load_run(run_dir: str | Path) -> tuple[CanViT, TrainConfig, Teacher, SceneSet, SceneSet]:
    """The trained model (latest checkpoint), its config, teacher and train / held-out scenes."""
    if not (Path(run_dir) / "config.json").is_file():
        raise CheckpointError(run_dir, "config.json", "not a training run folder")
    run = RunDir(run_dir)
    with restoring(run.path / "config.json", "config"):  # malformed JSON or fields not of a TrainConfig
        cfg = train_config_from_dict(json.loads((run.path / "config.json").read_text()))
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, progress=False))
    loaded = run.load_latest()
    if loaded is None:
        raise CheckpointError(run.path, "checkpoints", "no checkpoint in this run")
    state, _ = loaded
    model, teacher, train_set, val_set, _ = setup(cfg, run)
    with restoring(run.latest_checkpoint(), "model"):
        model.load_state_dict(state["model"])
    return model.eval(), cfg, teacher, train_set, val_set


@torch.no_grad()
def canvas_features(model: CanViT, images: Tensor, steps: int, generator, canvas_grid: int, s_min=0.05):
    """Canvas cells [N*steps, G*G, Dc] and CLS [N*steps, D] along R-IID rollouts (probe training data)."""
    b = images.shape[0]
    state = model.init_state(b, canvas_grid)
    cells, cls = [], []
    for _ in range(steps):
        vp = sample_viewpoints(b, generator, s_min)
        state, _ = model.step(model.glimpse(images, vp), vp, state, heads=False)
        cells.append(model.canvas_cells(state))
        cls.append(state.cls[:, 0])
    return torch.cat(cells), torch.cat(cls)


@torch.no_grad()
def write_locality(model: CanViT, state: State, images: Tensor, viewpoint: Viewpoint) -> float:
    """Mean norm of the canvas update in cells outside the glimpse over that inside it (0: writes
    stay where the glimpse looks; 1: a glimpse rewrites the whole canvas as much as its own area)."""
    new, _ = model.step(model.glimpse(images, viewpoint), viewpoint, state, heads=False)
    change = (model.canvas_cells(new) - model.canvas_cells(state)).norm(dim=-1)  # [B, G*G]
    pos = flat_grid(model.canvas_grid_of(state), device=images.device)  # [G*G, 2]
    inside = ((pos[None] - viewpoint.center[:, None]).abs() <= viewpoint.scale[:, None, None]).all(-1)
    return float((change * ~inside).sum() / (~inside).sum() / ((change * inside).sum() / inside.sum()))


@torch.no_grad()
def evaluate_policy(
    model,
    images,
    labels,
    scene_class,
    seg_probe,
    cls_probe,
    policy: str,
    steps: int,
    canvas_grid: int,
    num_classes: int,
    generator,
    targets: Tensor | None = None,
) -> dict[str, list[float]]:
    """mIoU (and top-1) after each glimpse of `policy` over the scenes; with `targets` (standardised
    teacher patches [B, G*G, D_t] on the model's grid) also the canvas head's MSE (`patch_mse`)."""
    b = images.shape[0]
    run = build_policy(policy).start(b, steps, generator)
    state = model.init_state(b, canvas_grid)
    out = {"miou": [], "top1": []} | ({"patch_mse": []} if targets is not None else {})
    uncertainty = None
    for _ in range(steps):
        vp = run.next(uncertainty)
        state, pred = model.step(model.glimpse(images, vp), vp, state, targets is not None)
        cells = model.canvas_cells(state)
        seg = seg_probe(cells, size=tuple(labels.shape[-2:])).argmax(1)
        out["miou"].append(miou(seg, labels, num_classes))
        if cls_probe is not None:
            out["top1"].append(top1(cls_probe(state.cls[:, 0]), scene_class))
        if targets is not None:
            out["patch_mse"].append(F.mse_loss(pred.scene_patches, targets).item())
        uncertainty = entropy_map(seg_probe, cells)
    return out


def _resize(images: Tensor, px: int) -> Tensor:
    return F.interpolate(images, size=(px, px), mode="bilinear", antialias=True, align_corners=False)


@torch.no_grad()
def _teacher_tokens(teacher: Teacher, images: Tensor, batch: int = 32) -> tuple[Tensor, Tensor]:
    outs = [teacher(images[i : i + batch]) for i in range(0, len(images), batch)]
    return torch.cat([o.patches for o in outs]), torch.cat([o.cls for o in outs])


def teacher_baseline(teacher, train_set: SceneSet, eval_set: SceneSet, px: int, probe_steps: int, seed: int):
    """The teacher's own probes, trained and evaluated with the scenes resized to px x px."""
    num_classes = train_set.num_classes
    tok, cls = _teacher_tokens(teacher, _resize(train_set.images, px))
    seg = fit_seg_probe(tok, train_set.labels, num_classes, layer_norm=False, steps=probe_steps, seed=seed)
    tok_e, cls_e = _teacher_tokens(teacher, _resize(eval_set.images, px))
    with torch.no_grad():
        result = {
            "px": px,
            "miou": miou(
                seg(tok_e, size=tuple(eval_set.labels.shape[-2:])).argmax(1), eval_set.labels, num_classes
            ),
        }
    if train_set.scene_class is not None:
        n_scene = int(train_set.scene_class.max()) + 1
        probe = fit_cls_probe(
            cls, train_set.scene_class, n_scene, layer_norm=False, steps=probe_steps, seed=seed
        )
        with torch.no_grad():
            result["top1"] = top1(probe(cls_e), eval_set.scene_class)
    if isinstance(teacher, ViTTeacher):
        c = teacher.vit.cfg
        result["gflops"] = vit_flops(c.dim, c.depth, c.mlp_ratio, c.patch_size, px, 1 + c.registers) / 1e9
    return result


def flop_matched_px(teacher: Teacher, gflops: float) -> int | None:
    """The teacher input size (a multiple of its patch) whose FLOPs are closest to `gflops`."""
    if not isinstance(teacher, ViTTeacher):
        return None
    c = teacher.vit.cfg
    sizes = range(c.patch_size, 64 * c.patch_size + 1, c.patch_size)
    return min(
        sizes, key=lambda px: abs(vit_flops(c.dim, c.depth, c.mlp_ratio, c.patch_size, px) / 1e9 - gflops)
    )


def load_published(cfg: EvalConfig) -> tuple[CanViT, Teacher | None, SceneSet, SceneSet]:
    """A published checkpoint (`cfg.canvit`), its teacher when `cfg.teacher_path` names one, and the scenes."""
    model = load_pretrained(cfg.canvit)
    d = cfg.data
    train_set, val_set = load_scenes(d.source, d.n_train + d.n_val, d.resolution, d.seed, d.path).split(d.n_train)
    teacher = None if cfg.teacher_path is None else build_teacher("dinov3", path=cfg.teacher_path)
    return model, teacher, train_set, val_set


def evaluate(
    model: CanViT, teacher: Teacher | None, train_set: SceneSet, eval_set: SceneSet, cfg: EvalConfig
) -> dict:
    """All metrics of one evaluation (see module docstring); without a teacher, no teacher baselines and no
    head error."""
    if train_set.labels is None or eval_set.labels is None:
        raise ValueError("evaluation needs dense labels")
    grid = cfg.canvas_grid or model.cfg.canvas_grid
    num_classes = train_set.num_classes
    g = torch.Generator().manual_seed(cfg.seed)
    cells, cls = canvas_features(model, train_set.images, cfg.probe_rollout, g, grid)
    labels = train_set.labels.repeat(cfg.probe_rollout, 1, 1)
    seg = fit_seg_probe(cells, labels, num_classes, steps=cfg.probe_steps, seed=cfg.seed)
    cls_probe = None
    if train_set.scene_class is not None:
        n_scene = int(train_set.scene_class.max()) + 1
        targets = train_set.scene_class.repeat(cfg.probe_rollout)
        cls_probe = fit_cls_probe(cls, targets, n_scene, steps=cfg.probe_steps, seed=cfg.seed)

    per_glimpse = canvit_flops(model.cfg, grid)["total"] / 1e9
    targets = None
    if teacher is not None and grid == model.cfg.canvas_grid:  # the head's targets live on the pretraining grid
        targets = model.standardize(*precompute_targets(teacher, eval_set.images, grid))[0]
    policies = {}
    for name in cfg.policies:
        policies[name] = evaluate_policy(
            model,
            eval_set.images,
            eval_set.labels,
            eval_set.scene_class,
            seg,
            cls_probe,
            name,
            cfg.steps,
            grid,
            num_classes,
            torch.Generator().manual_seed(cfg.seed + 1),
            targets,
        )
    full_px = eval_set.images.shape[-1]
    baselines = {} if teacher is None else {
        "teacher_full": teacher_baseline(teacher, train_set, eval_set, full_px, cfg.probe_steps, cfg.seed),
        "teacher_input_matched": teacher_baseline(
            teacher, train_set, eval_set, model.cfg.glimpse_px, cfg.probe_steps, cfg.seed
        ),
    }
    px = None if teacher is None else flop_matched_px(teacher, per_glimpse)
    if px is not None:
        baselines["teacher_flop_matched"] = teacher_baseline(
            teacher, train_set, eval_set, px, cfg.probe_steps, cfg.seed
        )
    full = Viewpoint.full(len(eval_set))
    after_full, _ = model.step(model.glimpse(eval_set.images, full), full,
                               model.init_state(len(eval_set), grid), heads=False)
    locality = {  # canvas update outside / inside a quadtree tile glimpsed after the full view
        f"level{lv}": write_locality(model, after_full, eval_set.images, Viewpoint.make(-1 + 2**-lv, -1 + 2**-lv,
                                     2**-lv, len(eval_set)))
        for lv in (1, 2)
    }
    return {
        "canvas_grid": grid,
        "glimpse_px": model.cfg.glimpse_px,
        "scene_px": full_px,
        "gflops_per_glimpse": per_glimpse,
        "policies": policies,
        "baselines": baselines,
        "write_outside_over_inside": locality,
        "n_probe_scenes": len(train_set),
        "n_eval_scenes": len(eval_set),
    }


def plot(metrics: dict, path: Path) -> Path:
    """mIoU against glimpses (per policy) and against cumulative GFLOPs, with the teacher baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    per = metrics["gflops_per_glimpse"]
    for name, curve in metrics["policies"].items():
        t = range(1, len(curve["miou"]) + 1)
        axes[0].plot(t, curve["miou"], marker="o", label=name)
        axes[1].plot([per * k for k in t], curve["miou"], marker="o", label=name)
    for (name, base), style in zip(metrics["baselines"].items(), ("-", "--", ":"), strict=False):
        axes[0].axhline(base["miou"], color="k", ls=style, label=f"{name} ({base['px']} px)")
        if "gflops" in base:
            axes[1].scatter([base["gflops"]], [base["miou"]], color="k", marker="x")
            axes[1].annotate(name, (base["gflops"], base["miou"]), fontsize=7)
    axes[0].set(xlabel="glimpses", ylabel="probe mIoU", title="mIoU per glimpse")
    axes[1].set(xlabel="cumulative GFLOPs", ylabel="probe mIoU", xscale="log", title="accuracy vs compute")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_evaluation(cfg: EvalConfig) -> dict:
    """Load a run, evaluate, write `metrics.json` and `miou.png` in `<output_root>/avfm_eval/<name>/`."""
    if cfg.canvit is not None:
        model, teacher, train_set, val_set = load_published(cfg)
    else:
        model, _, teacher, train_set, val_set = load_run(cfg.run_dir)
    metrics = evaluate(model, teacher, train_set, val_set, cfg)
    out = RunDir.create("avfm_eval", cfg.name, root=cfg.output_root)
    out.save_config(cfg)
    out.save_metrics(metrics)
    plot(metrics, out.file("miou.png"))
    return {"run_dir": str(out.path), **metrics}


def summarize(metrics: dict) -> dict:
    """A few headline numbers: per-policy first/last mIoU and the teacher baselines."""
    summary = {f"{k}/miou_first": v["miou"][0] for k, v in metrics["policies"].items()}
    summary |= {f"{k}/miou_last": v["miou"][-1] for k, v in metrics["policies"].items()}
    summary |= {f"{k}/miou": v["miou"] for k, v in metrics["baselines"].items()}
    return {k: (round(v, 4) if isinstance(v, float) and not math.isnan(v) else v) for k, v in summary.items()}
