"""Evaluate score distillation: every guidance x target x prompt x seed is distilled from its initial
object and judged three ways, each against what the untrained initial object already gets:

- **recognition**: the fraction of 8 turntable views the independent classifier labels as the prompt;
  the headline is the gain over the same target's untrained object (same seed), because the judge
  already calls the initial ball of Gaussians a sphere. `credited` counts a class the initial object
  already passes only when the distilled object also passes the shape check.
- **shape** (`scene3d.distill.score.geometry`): the nearest ground-truth primitive family by Chamfer
  distance and the tunnel count of the carved solid (a torus has a hole); a wrong shape fails.
- **saturation** against the training renders', and CPU minutes per object.

Results: one record per run (`runs`), a summary per guidance/target with mean, std and per-seed
values over `seeds` (each seed's value is its mean over prompts), the seeds whose torus passes, a PNG
of the turntables and a PNG of the table. Split a long evaluation across processes (`--seeds`,
`--targets`) and merge the JSON files with `--combine`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn
from tqdm import tqdm

from scene3d.checkpoint import atomic_write_json
from scene3d.config import Choice, Range, check
from scene3d.diffusion import PixelPrior, load_prior
from scene3d.diffusion.base import DiffusionPrior
from scene3d.diffusion.classifier import NONE_CLASS, ClassifierConfig, clutter_images, load_classifier, train_classifier
from scene3d.diffusion.data import render_objects
from scene3d.distill.score.distiller import DistillConfig, ScoreDistiller
from scene3d.distill.score.evaluate import recognition, saturation
from scene3d.distill.score.geometry import ShapeCheckConfig, passes_as, shape_report, shape_views
from scene3d.distill.score.guidance import GUIDANCES, make_guidance
from scene3d.distill.score.run import ScheduleConfig, make_run_guidance
from scene3d.distill.score.targets import Student, TargetOptions, build_target
from scene3d.distill.score.views import orbit_views, random_cameras
from scene3d.errors import DataError
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import RunConfig, fit
from scene3d.viz import image_grid, save_png

METRICS = ("recognition", "initial_recognition", "gain", "credited", "shape_pass", "saturation", "cpu_minutes")


@dataclass
class EvalScoreConfig:
    prior: Path = Path("outputs/prior/objects32")
    classifier: Path = Path("outputs/classifier/classifier32")  # trained there if missing
    guidances: Annotated[tuple[str, ...], Choice(GUIDANCES)] = ("sds", "vsd", "ism", "tsm")
    targets: tuple[str, ...] = ("field", "splats")
    prompts: tuple[str, ...] = ()  # empty: every class of the prior
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: Annotated[int, Range(1)] = 150
    batch_size: Annotated[int, Range(1)] = 4
    render_size: Annotated[int, Range(1, 4096)] = 32
    n_views: Annotated[int, Range(1)] = 8
    shape: ShapeCheckConfig = field(default_factory=ShapeCheckConfig)
    speed_size: Annotated[int, Range(1, 4096)] = 64  # guidance steps/s measured on renders of this size
    speed_steps: Annotated[int, Range(1)] = 5
    # torch threads (0: torch default); 2 spin-wait on a shared 2-core machine (quick: 13.5 vs 3.9 m)
    threads: Annotated[int, Range(0)] = 1
    quick: bool = False  # one prompt (torus), one seed, 30 steps of 2 views: a few minutes
    out: Path = Path("outputs/bench/score.json")
    combine: tuple[Path, ...] = ()  # merge these result files into `out` (no runs)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    target_options: TargetOptions = field(default_factory=TargetOptions)

    def __post_init__(self) -> None:
        check(self)


def guidance_speed(prior: DiffusionPrior, names: tuple[str, ...] = tuple(GUIDANCES), size: int = 64,
                   batch: int = 4, steps: int = 10) -> dict[str, float]:
    """Guidance steps per second (forward + backward of the surrogate, estimator update for VSD) on
    random [batch, 3, size, size] renders; one warm-up step each, then `steps` timed steps."""
    prompt = prior.config.classes[0] if isinstance(prior, PixelPrior) else "a sphere"
    cond, null = prior.condition(prompt, batch), prior.null_condition(batch)
    cams, _ = random_cameras(batch, size)
    rates = {}
    for name in names:
        guidance = make_guidance(name, prior)
        images = torch.rand(batch, 3, size, size, requires_grad=True)
        guidance(images, cond, null, cameras=cams).loss.backward()  # warm-up
        start = time.perf_counter()
        for step in range(steps):
            guidance(images, cond, null, step, cameras=cams).loss.backward()
        rates[name] = steps / (time.perf_counter() - start)
    return rates


def null_renders(size: int, n_views: int, options: TargetOptions, seed: int = 777) -> dict[str, Tensor]:
    """Renders of no object, to check that the classifier is not lenient: blank white views,
    clutter images (a seed the classifier's training never uses), and the untrained field and
    splats students (a grey blob and a grey ball of Gaussians) from the orbit views."""
    views = orbit_views(n_views, size)
    return {"blank": torch.ones(n_views, 3, size, size),
            "clutter": clutter_images(64, size, torch.Generator().manual_seed(seed)),
            **{f"{name}_init": build_target(name, 0, options).render(views).clamp(0, 1)
               for name in ("field", "splats")}}


@torch.no_grad()
def label_rates(classifier: nn.Module, classes: tuple[str, ...], images: Tensor) -> dict[str, float]:
    """Fraction of `images` the classifier gives each label."""
    labels = classifier(images).argmax(-1)
    return {c: float((labels == k).float().mean()) for k, c in enumerate(classes)}


def evaluate_score(config: EvalScoreConfig) -> dict:
    if config.combine:
        return combine_results(config.combine, config.out)
    if config.quick:
        config.seeds, config.steps, config.batch_size = config.seeds[:1], 30, 2
        config.prompts = config.prompts or ("torus",)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or threads)
    try:
        return _evaluate(config)
    finally:
        torch.set_num_threads(threads)


def judge(student: Student, classifier: nn.Module, label: int, views, shape: ShapeCheckConfig, seed: int
          ) -> tuple[dict, Tensor]:
    """Recognition and saturation of the turntable views, and the shape report (None without
    `student.surface`); returns the views too."""
    images = student.render(views).clamp(0, 1)
    out = {"recognition": recognition(classifier, images, label), "saturation": saturation(images), "shape": None}
    if student.surface is not None:
        cameras = shape_views(shape)
        depth, alpha = student.surface(cameras)
        out["shape"] = shape_report(cameras, depth, alpha, shape, seed=seed)
    return out, images


def _evaluate(config: EvalScoreConfig) -> dict:
    prior = load_prior(config.prior)
    if not config.classifier.is_dir() or RunDir(config.classifier).latest_checkpoint() is None:
        train_classifier(ClassifierConfig(run=RunConfig(name=config.classifier.name,
                                                        output_root=config.classifier.parent.parent)))
    classifier, classes = load_classifier(config.classifier)
    objects = tuple(c for c in classes if c != NONE_CLASS)
    prompts = config.prompts or objects
    data = render_objects(8, 4, config.render_size, seed=3000, classes=objects)
    views = orbit_views(config.n_views, config.render_size)
    results: dict = {"config": config_to_dict(config), "torch_threads": torch.get_num_threads(),
                     "seeds": list(config.seeds), "data_saturation": saturation(data.images), "runs": [],
                     "initial": [],
                     "null_label_rates": {name: label_rates(classifier, classes, images) for name, images in
                                          null_renders(config.render_size, config.n_views,
                                                       config.target_options).items()}}
    grid_rows = []
    bar = tqdm(total=len(config.seeds) * len(config.targets) * len(prompts) * (1 + len(config.guidances)),
               desc="eval score", dynamic_ncols=True)
    for seed in config.seeds:
        for target_name in config.targets:
            initial = build_target(target_name, seed, config.target_options)
            verdict, images = judge(initial, classifier, 0, views, config.shape, seed)  # renders once
            shape = verdict["shape"]
            for prompt in prompts:
                results["initial"].append({"target": target_name, "seed": seed, "prompt": prompt,
                                           "recognition": recognition(classifier, images, classes.index(prompt)),
                                           "shape_pass": None if shape is None else passes_as(shape, prompt),
                                           "shape": shape})
                bar.update(1)
            for guidance_name in config.guidances:
                for prompt in prompts:
                    student = build_target(target_name, seed, config.target_options, guidance=guidance_name)
                    guidance = make_run_guidance(guidance_name, prior, config.schedule, config.steps)
                    dc = DistillConfig(prompt=prompt, steps=config.steps, batch_size=config.batch_size,
                                       render_size=config.render_size, seed=seed)
                    start = time.process_time()
                    fit(ScoreDistiller(prior, guidance, [student.target], dc), None, RunConfig(progress=False),
                        config.steps)
                    cpu = time.process_time() - start
                    verdict, images = judge(student, classifier, classes.index(prompt), views, config.shape, seed)
                    shape = verdict.pop("shape")
                    results["runs"].append({"guidance": guidance_name, "target": target_name, "prompt": prompt,
                                            "seed": seed, **verdict, "cpu_minutes": cpu / 60,
                                            "shape_pass": None if shape is None else passes_as(shape, prompt),
                                            "shape": shape})
                    grid_rows.append(list(rearrange(images, "v c h w -> v h w c")))
                    bar.update(1)
                    atomic_write_json(config.out, results)  # partial results survive an interrupted run
    bar.close()
    results["guidance_steps_per_second"] = guidance_speed(prior, config.guidances, config.speed_size,
                                                          config.batch_size, config.speed_steps)
    png = config.out.with_suffix(".png")
    save_png(png, image_grid(grid_rows))
    results["turntables_png"] = str(png)
    return finish(results, config.out)


def _stats(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_seed": values}


def summarize(results: dict) -> dict:
    """Per guidance/target: every METRICS entry as mean / std / per_seed over the seeds (a seed's
    value is its mean over prompts), recognition per prompt, and the seeds whose torus passes the
    shape check (its hole: one tunnel, and the torus the nearest family)."""
    initial = {(r["target"], r["seed"], r["prompt"]): r for r in results["initial"]}
    seeds = results["seeds"]
    summary = {}
    for key in dict.fromkeys(f"{r['guidance']}/{r['target']}" for r in results["runs"]):
        guidance, target = key.split("/")
        runs = [r for r in results["runs"] if r["guidance"] == guidance and r["target"] == target]
        per_seed: dict[str, list[float]] = {m: [] for m in METRICS}
        prompts = sorted({r["prompt"] for r in runs})
        for seed in seeds:
            mine = [r for r in runs if r["seed"] == seed]
            if sorted(r["prompt"] for r in mine) != prompts:
                raise DataError(None, "runs", f"{key}, seed {seed}: runs of {sorted(r['prompt'] for r in mine)}, "
                                              f"expected one of each of {prompts} (an unfinished evaluation?)")
            rows = []
            for r in mine:
                init = initial[(target, seed, r["prompt"])]
                passed = bool(r["shape_pass"])
                credited = r["recognition"] if init["recognition"] < 0.5 else r["recognition"] * passed
                rows.append({"recognition": r["recognition"], "initial_recognition": init["recognition"],
                             "gain": r["recognition"] - init["recognition"], "credited": credited,
                             "shape_pass": float(passed), "saturation": r["saturation"],
                             "cpu_minutes": r["cpu_minutes"]})
            for m in METRICS:
                per_seed[m].append(float(np.mean([row[m] for row in rows])))
        tori = [r for r in runs if r["prompt"] == "torus" and r["shape"] is not None]
        summary[key] = {**{m: _stats(v) for m, v in per_seed.items()},
                        "recognition_per_prompt": {p: float(np.mean([r["recognition"] for r in runs
                                                                     if r["prompt"] == p]))
                                                   for p in dict.fromkeys(r["prompt"] for r in runs)},
                        # the hole check: one tunnel and the torus the nearest family (noise makes spurious tunnels)
                        "torus_pass_seeds": [r["seed"] for r in tori if r["shape_pass"]],
                        "torus_tunnels": {r["seed"]: r["shape"]["tunnels"] for r in tori}}
    return summary


def finish(results: dict, out: Path) -> dict:
    """Add the summary and its PNG, write `out`."""
    results["summary"] = summarize(results)
    results["table_png"] = str(plot_table(results["summary"], results["seeds"], out.with_name(out.stem + "_table.png")))
    atomic_write_json(out, results)
    return results


def combine_results(paths: tuple[Path, ...], out: Path) -> dict:
    """Merge result files of the same configuration run on different seeds or targets."""
    parts = []
    for path in paths:
        try:
            parts.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(path, "file", f"cannot read a score result: {error}") from error
    same = ("steps", "batch_size", "render_size", "n_views", "schedule", "target_options", "prior", "shape")
    for path, part in zip(paths[1:], parts[1:], strict=True):
        for name in same:
            if part["config"].get(name) != parts[0]["config"].get(name):
                raise DataError(path, f"config.{name}", f"differs from {paths[0]}'s; only runs of one "
                                                        "configuration can be combined")
    merged = {**parts[0], "runs": [r for p in parts for r in p["runs"]],
              "initial": list({(r["target"], r["seed"], r["prompt"]): r
                               for p in parts for r in p["initial"]}.values()),
              "seeds": sorted({s for p in parts for s in p["seeds"]}), "combined_from": [str(p) for p in paths]}
    keys = [(r["guidance"], r["target"], r["prompt"], r["seed"]) for r in merged["runs"]]
    if len(keys) != len(set(keys)):
        raise DataError(None, "runs", "the files hold the same run twice (guidance, target, prompt, seed)")
    merged.pop("summary", None)
    return finish(merged, out)


def plot_table(summary: dict, seeds: list[int], path: Path) -> Path:
    """Bars: recognition gain over the initial object and the shape-check pass rate per
    guidance/target, mean and std over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(summary)
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys)), 3.6))
    for offset, metric, label in ((-0.2, "gain", "recognition gain over the initial object"),
                                  (0.2, "shape_pass", "shape check passed")):
        ax.bar(x + offset, [summary[k][metric]["mean"] for k in keys], 0.4,
               yerr=[summary[k][metric]["std"] for k in keys], capsize=3, label=label)
    ax.set_xticks(x, keys, rotation=30, ha="right")
    ax.axhline(0, color="black", linewidth=0.8)
    lowest = min(summary[k][m]["mean"] - summary[k][m]["std"] for k in keys for m in ("gain", "shape_pass"))
    ax.set_ylim(min(-0.05, lowest - 0.05), 1.05)
    ax.set_title(f"score distillation, mean and std over seeds {seeds}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
