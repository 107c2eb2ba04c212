"""Evaluate score distillation: for each guidance x target x prompt x seed, distill, render 8
evenly spaced views, and report the fraction the independent classifier recognises as the prompt,
colour saturation vs the training renders, diversity across seeds, and guidance steps per second.

Targets come from `scene3d.distill.targets.TARGETS` (factories `seed -> (Target, render_for_eval)`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange

from scene3d.checkpoint import atomic_write_json
from scene3d.diffusion import load_prior
from scene3d.diffusion.classifier import ClassifierConfig, load_classifier, train_classifier
from scene3d.diffusion.data import render_objects
from scene3d.distill.distiller import DistillConfig, ScoreDistiller
from scene3d.distill.evaluate import diversity, recognition, saturation
from scene3d.distill.score import make_guidance
from scene3d.distill.targets import TARGETS
from scene3d.distill.views import turntable_cameras
from scene3d.runs import RunDir, config_to_dict
from scene3d.viz import image_grid, save_png


@dataclass
class EvalScoreConfig:
    prior: Path = Path("outputs/prior/objects32")
    classifier: Path = Path("outputs/classifier/classifier32")  # trained there if missing
    guidances: tuple[str, ...] = ("sds", "vsd")
    targets: tuple[str, ...] = ("voxels",)
    prompts: tuple[str, ...] = ()  # empty: every class of the prior
    seeds: int = 2
    steps: int = 300
    batch_size: int = 4
    render_size: int = 32
    guidance_scale: float = 7.5
    n_views: int = 8
    quick: bool = False  # 1 seed, 100 steps, 2 prompts
    out: Path = Path("outputs/bench/score.json")
    distill: DistillConfig = field(default_factory=DistillConfig)


def evaluate_score(config: EvalScoreConfig) -> dict:
    if config.quick:
        config.seeds, config.steps = 1, 100
        config.prompts = config.prompts or ("sphere", "torus")
    prior = load_prior(config.prior)
    if not config.classifier.is_dir() or RunDir(config.classifier).latest_checkpoint() is None:
        train_classifier(ClassifierConfig(root=config.classifier.parent.parent, name=config.classifier.name))
    classifier, classes = load_classifier(config.classifier)
    prompts = config.prompts or classes
    data = render_objects(8, 4, config.render_size, seed=3000, classes=classes)
    views = turntable_cameras(config.n_views, config.render_size)
    results: dict = {"config": config_to_dict(config), "data_saturation": saturation(data.images), "runs": {}}
    grid_rows = []
    for target_name in config.targets:
        for guidance_name in config.guidances:
            rec, sats, divs, rates = [], [], [], []
            for prompt in prompts:
                renders = []
                for seed in range(config.seeds):
                    target, render_eval = TARGETS[target_name](seed)
                    guidance = make_guidance(guidance_name, prior, guidance_scale=config.guidance_scale,
                                             t_max=0.98, t_max_end=0.5, anneal_steps=config.steps)
                    dc = DistillConfig(prompt=prompt, steps=config.steps, batch_size=config.batch_size,
                                       render_size=config.render_size, seed=seed, views=config.distill.views)
                    start = time.perf_counter()
                    ScoreDistiller(prior, guidance, [target], dc).run(progress=False)
                    rates.append(config.steps / (time.perf_counter() - start))
                    with torch.no_grad():
                        images = render_eval(views)
                    renders.append(images)
                    rec.append(recognition(classifier, images, classes.index(prompt)))
                    sats.append(saturation(images))
                    grid_rows.append(list(rearrange(images, "v c h w -> v h w c")))
                divs.append(diversity(torch.stack(renders)))
            key = f"{guidance_name}/{target_name}"
            results["runs"][key] = {"recognition": sum(rec) / len(rec), "saturation": sum(sats) / len(sats),
                                    "diversity": sum(divs) / len(divs), "steps_per_second": sum(rates) / len(rates),
                                    "per_run_recognition": rec}
            print(f"{key}: {results['runs'][key]}")
    png = config.out.with_suffix(".png")
    save_png(png, image_grid(grid_rows))
    results["turntables_png"] = str(png)
    atomic_write_json(config.out, results)
    return results
