"""`make demo` stage for the diffusion prior: train the pixel prior and the independent classifier,
write the sample grid, then sanity-check the guidances in 2D (a learnable image per class distilled
with SDS and VSD, labelled by the classifier). The 3D stage that follows it is
`lab.demo.score.run_stage` (it reuses this stage's prior and classifier)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from einops import rearrange

from scene3d.diffusion.base import DiffusionPrior
from scene3d.diffusion.classifier import ClassifierConfig, train_classifier
from scene3d.diffusion.data import render_objects
from scene3d.diffusion.pixel import PixelPrior
from scene3d.diffusion.train_prior import TrainPriorConfig, train_prior
from scene3d.distill.score.distiller import DistillConfig, ScoreDistiller, image_target
from scene3d.distill.score.evaluate import recognition, saturation
from scene3d.distill.score.guidance import make_guidance
from scene3d.runs import RunDir
from scene3d.train import RunConfig, fit
from scene3d.viz import image_grid, save_png


def distill_images(prior: DiffusionPrior, guidance: str, prompt: str, steps: int, seeds: int = 2,
                   guidance_scale: float = 5.0, lr: float = 0.05) -> torch.Tensor:
    """[seeds, 3, R, R] learnable images distilled towards `prompt` (2D check of a guidance)."""
    size = prior.config.resolution
    out = []
    for seed in range(seeds):
        target, logits = image_target(size, lr=lr, seed=seed)
        torch.manual_seed(seed)
        config = DistillConfig(prompt=prompt, steps=steps, batch_size=4, render_size=size, seed=seed)
        g = make_guidance(guidance, prior, guidance_scale=guidance_scale, t_max=0.98, t_max_end=0.5,
                          anneal_steps=steps)
        fit(ScoreDistiller(prior, g, [target], config), None, RunConfig(progress=False), steps)
        out.append(torch.sigmoid(logits.detach())[0])
    return torch.stack(out)


def run_stage(out_dir: Path, quick: bool) -> dict:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    prior_config = TrainPriorConfig(steps=150 if quick else 800, n_objects_per_class=16 if quick else 128,
                                    sample_every=0, samples_per_class=4 if quick else 8,
                                    sample_steps=25 if quick else 50,
                                    run=RunConfig(name="prior", output_root=out_dir, resume=False))
    run = train_prior(prior_config)
    prior = PixelPrior.from_pretrained(run.path / "prior")
    classifier, cls_metrics = train_classifier(ClassifierConfig(
        steps=150 if quick else 400, n_objects_per_class=24 if quick else 96,
        run=RunConfig(name="classifier", output_root=out_dir, resume=False)))
    data = render_objects(8, 4, prior.config.resolution, seed=2000)
    metrics: dict = {"prior_run": str(run.path), "samples": str(run.path / "samples_final.png"),
                     "classifier_val_accuracy": cls_metrics["val_accuracy"],
                     "data_saturation": saturation(data.images), "image_check": {}}
    rows = []
    for name in ("sds", "vsd"):
        recognised, sats, images_all = [], [], []
        for k, prompt in enumerate(prior.config.classes):
            images = distill_images(prior, name, prompt, steps=40 if quick else 120, seeds=1)
            recognised.append(recognition(classifier, images, k))
            sats.append(saturation(images))
            images_all.append(images)
        rows.append(list(rearrange(torch.cat(images_all), "n c h w -> n h w c")))
        metrics["image_check"][name] = {"recognition": sum(recognised) / len(recognised),
                                        "saturation": sum(sats) / len(sats)}
    save_png(out_dir / "image_check.png", image_grid(rows))
    metrics["image_check_png"] = str(out_dir / "image_check.png")
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    RunDir(out_dir).save_metrics(metrics, "prior_stage.json")
    return metrics
