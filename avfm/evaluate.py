"""Evaluation of a pretrained CanViT with frozen probes: mIoU and top-1 per glimpse and per policy
(R-IID, F-IID, C2F, F2C, EG-C2F and the repeated-full-view control RFS), next to the teacher's probes on
the full scene at full resolution, input-matched (the pixels of one full-scene glimpse, on one glimpse's
token grid) and FLOP-matched (one glimpse's FLOPs). Several pretraining runs (one per seed) are
evaluated alike and reported as mean and std (`combine_seeds`), written as JSON and one PNG per table.
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
from jaxtyping import Float
from torch import Tensor

from avfm.coords import flat_grid
from avfm.data import SceneSet, load_scenes, precompute_targets
from avfm.flops import canvit_flops, vit_flops
from avfm.glimpse import Viewpoint, build_policy, extract_glimpse, sample_viewpoints
from avfm.model import CanViT, State
from avfm.pretrained import load_pretrained
from avfm.probes import entropy_map, fit_cls_probe, fit_seg_probe, top1
from avfm.teachers import Teacher, ViTTeacher, build_teacher
from avfm.train import DataConfig, OptimConfig, TeacherConfig, TrainConfig, setup
from scene3d.checkpoint import atomic_write_json, restoring
from scene3d.config import Range, check
from scene3d.errors import CheckpointError
from scene3d.metrics import miou
from scene3d.runs import OUTPUTS, RunDir
from scene3d.train import RunConfig


@dataclass
class EvalConfig:
    run_dir: tuple[str, ...] = ("outputs/avfm/avfm",)
    """Pretraining runs to evaluate, one per seed (`--run-dir a b c`): curves are their mean and std."""
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
    from avfm.self_distillation import SelfDistillationConfig
    from avfm.teachers import DenseTeacherConfig

    d = dict(d)
    if "run" not in d:
        raise ValueError("written by an older version, with the run options (run_name, out_root, ...) at its top "
                         "level: move them into a 'run' section with this version's names (name, output_root, ...)")
    teacher = dict(d.pop("teacher"))
    if "train" in teacher:
        raise ValueError("written by an older version, with the label-trained teacher's options under 'train' "
                         "(now 'supervised', and its name 'trained' is now 'supervised')")
    teacher["supervised"] = DenseTeacherConfig(**teacher["supervised"])
    ssl = {k: tuple(v) if isinstance(v, list) else v for k, v in teacher["self_supervised"].items()}
    teacher["self_supervised"] = SelfDistillationConfig(**ssl)
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


def teacher_view(images: Tensor, px: int, source_px: int | None = None) -> Float[Tensor, "N 3 px px"]:
    """Scenes [N, 3, H, W] as a teacher baseline sees them: resized to px (antialiased); with `source_px`, the
    pixels of a full-scene glimpse of source_px (`extract_glimpse`, exactly what CanViT's first C2F glimpse
    holds) resized to px."""
    if source_px is not None:
        images = extract_glimpse(images, Viewpoint.full(len(images)), source_px)
    return _resize(images, px)


def teacher_baseline(teacher, train_set: SceneSet, eval_set: SceneSet, px: int, probe_steps: int, seed: int,
                     source_px: int | None = None):
    """The teacher's own probes, trained and evaluated on `teacher_view(scenes, px, source_px)`."""
    num_classes = train_set.num_classes
    tok, cls = _teacher_tokens(teacher, teacher_view(train_set.images, px, source_px))
    seg = fit_seg_probe(tok, train_set.labels, num_classes, layer_norm=False, steps=probe_steps, seed=seed)
    tok_e, cls_e = _teacher_tokens(teacher, teacher_view(eval_set.images, px, source_px))
    with torch.no_grad():
        result = {
            "px": px,
            "source_px": source_px or eval_set.images.shape[-1],
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


def untrained_like(teacher: ViTTeacher, seed: int) -> ViTTeacher:
    """A ViT teacher of the same configuration at its (seeded) initialisation, frozen."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ViTTeacher(teacher.vit.cfg).eval().requires_grad_(False)


def input_matched_px(model: CanViT, teacher: Teacher) -> int:
    """The teacher input size whose token grid is one glimpse's ((glimpse_px / patch) tokens a side): the
    input-matched baseline sees the full scene at glimpse_px, resampled to this size (as the paper, where
    teacher and glimpse share the 16 px patch, both see 8 x 8 tokens)."""
    return model.cfg.glimpse_px // model.cfg.patch_size * teacher.patch_size


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
    """All metrics of one model's evaluation (see module docstring); without a teacher, no teacher baselines
    and no head error. `combine_seeds` turns several (one per pretraining seed) into mean and std."""
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
            teacher, train_set, eval_set, input_matched_px(model, teacher), cfg.probe_steps, cfg.seed,
            source_px=model.cfg.glimpse_px,
        ),
    }
    if isinstance(teacher, ViTTeacher):  # what training added: the same ViT at its initialisation
        baselines["teacher_untrained_full"] = teacher_baseline(
            untrained_like(teacher, cfg.seed), train_set, eval_set, full_px, cfg.probe_steps, cfg.seed)
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


POLICY_LABELS = {"c2f": "C2F", "eg_c2f": "EG-C2F", "full_first": "F-IID", "random": "R-IID",
                 "repeated_full": "RFS (control)", "f2c": "F2C"}


def _mean_std(values: list) -> dict:
    """{"mean", "std", "per_seed"} over the first axis of `values` (scalars or equal-length curves); std is
    the population standard deviation (0 for one seed)."""
    t = torch.tensor(values, dtype=torch.float64)
    mean, std = t.mean(0), t.std(0, correction=0)
    return {"mean": mean.tolist(), "std": std.tolist(), "per_seed": values}


def combine_seeds(runs: list[dict], seeds: list[int]) -> dict:
    """One evaluation per pretraining seed (`evaluate`'s dicts) -> every curve and baseline as mean and
    std over the seeds, with each seed's values (`per_seed`, in the order of `seeds`)."""
    first = runs[0]
    policies = {name: {metric: _mean_std([r["policies"][name][metric] for r in runs]) for metric in curve}
                for name, curve in first["policies"].items()}
    baselines = {}
    for name, base in first["baselines"].items():
        scores = {m: _mean_std([r["baselines"][name][m] for r in runs]) for m in ("miou", "top1") if m in base}
        baselines[name] = {**{k: v for k, v in base.items() if k not in scores}, **scores}
    locality = {k: _mean_std([r["write_outside_over_inside"][k] for r in runs])
                for k in first["write_outside_over_inside"]}
    static = {k: v for k, v in first.items() if k not in ("policies", "baselines", "write_outside_over_inside")}
    return {"seeds": list(seeds), **static, "policies": policies, "baselines": baselines,
            "c2f_minus": c2f_minus_controls(runs), "write_outside_over_inside": locality}


def c2f_minus_controls(runs: list[dict]) -> dict:
    """C2F's mIoU minus each control's, per glimpse, paired within each seed (mean, std, per seed): the
    repeated-full-view control RFS and the input-matched teacher, as the paper compares them."""
    if "c2f" not in runs[0]["policies"]:
        return {}
    out = {}
    if "repeated_full" in runs[0]["policies"]:
        out["repeated_full"] = _mean_std([[a - b for a, b in zip(r["policies"]["c2f"]["miou"],
                                                                   r["policies"]["repeated_full"]["miou"], strict=True)]
                                          for r in runs])
    if "teacher_input_matched" in runs[0]["baselines"]:
        out["teacher_input_matched"] = _mean_std([[a - r["baselines"]["teacher_input_matched"]["miou"]
                                                   for a in r["policies"]["c2f"]["miou"]] for r in runs])
    return out


def plot(metrics: dict, path: Path, metric: str = "miou") -> Path:
    """`metric` (miou or top1) of `combine_seeds`'s result against glimpses (per policy) and against
    cumulative GFLOPs: mean over the seeds with a band of +-1 std; the teacher baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    per = metrics["gflops_per_glimpse"]
    for name, curves in metrics["policies"].items():
        if metric not in curves or not curves[metric]["mean"]:
            continue
        mean, std = torch.tensor(curves[metric]["mean"]), torch.tensor(curves[metric]["std"])
        t = torch.arange(1, len(mean) + 1)
        label = POLICY_LABELS.get(name, name)
        ls = "--" if name == "repeated_full" else "-"
        line = axes[0].plot(t, mean, marker="o", ms=3, ls=ls, label=label)[0]
        axes[0].fill_between(t, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        axes[1].plot(per * t, mean, marker="o", ms=3, ls=ls, color=line.get_color(), label=label)
    for (name, base), style in zip(metrics["baselines"].items(), ("-", "--", ":", "-."), strict=False):
        if metric not in base:
            continue
        mean, std = base[metric]["mean"], base[metric]["std"]
        axes[0].axhline(mean, color="k", ls=style, lw=1,
                        label=f"{name} ({base['source_px']} px seen, {base['px']} px input)")
        axes[0].axhspan(mean - std, mean + std, color="k", alpha=0.06)
        if "gflops" in base:
            axes[1].scatter([base["gflops"]], [mean], color="k", marker="x")
            axes[1].annotate(name, (base["gflops"], mean), fontsize=7)
    seeds = metrics.get("seeds", [])
    what = {"miou": "probe mIoU", "top1": "probe top-1"}[metric]
    axes[0].set(xlabel="glimpses", ylabel=what,
                title=f"{what} per glimpse: mean and std over pretraining seeds {seeds}")
    axes[1].set(xlabel="cumulative GFLOPs", ylabel=what, xscale="log", title="accuracy vs compute")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(metrics: dict, folder: Path) -> dict[str, str]:
    """`metrics.json` and one PNG per table (`miou.png`, and `top1.png` where there are scene classes)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "metrics.json", metrics)
    plots = {"plot": str(plot(metrics, folder / "miou.png", "miou"))}
    if any(c.get("top1", {}).get("mean") for c in metrics["policies"].values()):
        plots["top1_plot"] = str(plot(metrics, folder / "top1.png", "top1"))
    return plots


def run_evaluation(cfg: EvalConfig) -> dict:
    """Load each run of `cfg.run_dir` (one per pretraining seed) or the published model, evaluate, and write
    the mean and std over the runs (`combine_seeds`): `metrics.json`, `miou.png` and `top1.png` in
    `<output_root>/avfm_eval/<name>/`."""
    runs, seeds = [], []
    if cfg.canvit is not None:
        model, teacher, train_set, val_set = load_published(cfg)
        runs.append(evaluate(model, teacher, train_set, val_set, cfg))
        seeds.append(cfg.seed)
    else:
        for run_dir in cfg.run_dir:
            model, train_cfg, teacher, train_set, val_set = load_run(run_dir)
            runs.append(evaluate(model, teacher, train_set, val_set, cfg))
            seeds.append(train_cfg.seed)
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"--run-dir: the runs repeat pretraining seeds {seeds}; give one run per seed")
    metrics = combine_seeds(runs, seeds)
    out = RunDir.create("avfm_eval", cfg.name, root=cfg.output_root)
    out.save_config(cfg)
    plots = write_results(metrics, out.path)
    return {"run_dir": str(out.path), **plots, **metrics}


def summarize(metrics: dict) -> dict:
    """Headline numbers of `combine_seeds`'s result: per policy the mean mIoU at the first and last glimpse,
    the teacher baselines' mean mIoU, and the seeds."""
    policies, baselines = metrics["policies"], metrics["baselines"]
    summary = {f"{k}/miou_first": v["miou"]["mean"][0] for k, v in policies.items()}
    summary |= {f"{k}/miou_last": v["miou"]["mean"][-1] for k, v in policies.items()}
    summary |= {f"{k}/miou": v["miou"]["mean"] for k, v in baselines.items()}
    rounded = {k: (round(v, 4) if isinstance(v, float) and not math.isnan(v) else v) for k, v in summary.items()}
    return {"seeds": metrics["seeds"], **rounded}
