"""Evaluate score distillation: for each guidance x target x prompt x seed, distill, render 8
evenly spaced views, and report the fraction the independent classifier recognises as the prompt,
colour saturation vs the training renders, diversity across seeds, wall time, and the guidances'
own speed (steps per second on 64x64 renders).

Targets come from `scene3d.distill.score.targets.TARGETS` (`build_target(name, seed, options)`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

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
from scene3d.distill.score.evaluate import diversity, recognition, saturation
from scene3d.distill.score.guidance import GUIDANCES, make_guidance
from scene3d.distill.score.run import ScheduleConfig, make_run_guidance
from scene3d.distill.score.targets import TargetOptions, build_target
from scene3d.distill.score.views import orbit_views, random_cameras
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import RunConfig, fit
from scene3d.viz import image_grid, save_png


@dataclass
class EvalScoreConfig:
    prior: Path = Path("outputs/prior/objects32")
    classifier: Path = Path("outputs/classifier/classifier32")  # trained there if missing
    guidances: Annotated[tuple[str, ...], Choice(GUIDANCES)] = ("sds", "vsd")
    targets: tuple[str, ...] = ("field", "splats")
    prompts: tuple[str, ...] = ()  # empty: every class of the prior
    seeds: Annotated[int, Range(1)] = 2
    first_seed: int = 0  # seeds first_seed .. first_seed + seeds - 1 (split a long evaluation across processes)
    steps: Annotated[int, Range(1)] = 150
    batch_size: Annotated[int, Range(1)] = 4
    render_size: Annotated[int, Range(1, 4096)] = 32
    n_views: Annotated[int, Range(1)] = 8
    speed_size: Annotated[int, Range(1, 4096)] = 64  # guidance steps/s measured on renders of this size
    speed_steps: Annotated[int, Range(1)] = 5
    # torch threads (0: torch default); 2 spin-wait on a shared 2-core machine (quick: 13.5 vs 3.9 m)
    threads: Annotated[int, Range(0)] = 1
    quick: bool = False  # one prompt (torus), 2 seeds (for diversity), 30 steps of 2 views: a few minutes
    out: Path = Path("outputs/bench/score.json")
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
    if config.quick:
        config.seeds, config.steps, config.batch_size = 2, 30, 2
        config.prompts = config.prompts or ("torus",)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or threads)
    try:
        return _evaluate(config)
    finally:
        torch.set_num_threads(threads)


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
                     "data_saturation": saturation(data.images), "runs": {},
                     "null_label_rates": {name: label_rates(classifier, classes, images) for name, images in
                                          null_renders(config.render_size, config.n_views,
                                                       config.target_options).items()}}
    grid_rows = []
    jobs = [(t, g) for t in config.targets for g in config.guidances]
    bar = tqdm(total=len(jobs) * len(prompts) * config.seeds, desc="eval score", dynamic_ncols=True)
    for target_name, guidance_name in jobs:
        rec, sats, divs, seconds, per_prompt = [], [], [], [], {}
        for prompt in prompts:
            renders = []
            for seed in range(config.first_seed, config.first_seed + config.seeds):
                student = build_target(target_name, seed, config.target_options, guidance=guidance_name)
                guidance = make_run_guidance(guidance_name, prior, config.schedule, config.steps)
                dc = DistillConfig(prompt=prompt, steps=config.steps, batch_size=config.batch_size,
                                   render_size=config.render_size, seed=seed)
                start = time.perf_counter()
                fit(ScoreDistiller(prior, guidance, [student.target], dc), None, RunConfig(progress=False),
                    config.steps)
                seconds.append(time.perf_counter() - start)
                images = student.render(views).clamp(0, 1)
                renders.append(images)
                rec.append(recognition(classifier, images, classes.index(prompt)))
                sats.append(saturation(images))
                per_prompt.setdefault(prompt, []).append(rec[-1])
                grid_rows.append(list(rearrange(images, "v c h w -> v h w c")))
                bar.update(1)
            divs.append(diversity(torch.stack(renders)))
        key = f"{guidance_name}/{target_name}"
        results["runs"][key] = {"recognition": sum(rec) / len(rec), "saturation": sum(sats) / len(sats),
                                "diversity": sum(divs) / len(divs), "seconds_per_run": sum(seconds) / len(seconds),
                                "distill_steps_per_second": config.steps / (sum(seconds) / len(seconds)),
                                "recognition_per_prompt": {p: sum(v) / len(v) for p, v in per_prompt.items()}}
        bar.write(f"{key}: {results['runs'][key]}")
        atomic_write_json(config.out, results)  # partial results survive an interrupted run
    bar.close()
    results["guidance_steps_per_second"] = guidance_speed(prior, config.guidances, config.speed_size,
                                                          config.batch_size, config.speed_steps)
    png = config.out.with_suffix(".png")
    save_png(png, image_grid(grid_rows))
    results["turntables_png"] = str(png)
    atomic_write_json(config.out, results)
    return results
