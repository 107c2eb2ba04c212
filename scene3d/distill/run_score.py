"""One score-distillation run into a registered target: progress bar, TensorBoard, multi-view
renders, a turntable video, and (with a classifier) the recognition of 8 views.

    distill_score(DistillScoreConfig(guidance="vsd", target="voxels", prompt="torus"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from einops import rearrange

from scene3d.diffusion import PixelPrior, load_prior
from scene3d.diffusion.classifier import load_classifier
from scene3d.distill.distiller import DistillConfig, ScoreDistiller
from scene3d.distill.evaluate import recognition, saturation
from scene3d.distill.score import GUIDANCES, make_guidance
from scene3d.distill.targets import TARGETS
from scene3d.distill.views import turntable_cameras
from scene3d.errors import DataError
from scene3d.runs import RunDir
from scene3d.viz import image_grid, save_png


@dataclass
class DistillScoreConfig:
    prior: Path = Path("outputs/prior/objects32")
    guidance: str = "sds"
    target: str = "voxels"
    name: str = ""  # default: <prompt>_<guidance>_<target>_s<seed>
    root: Path = Path("outputs")
    classifier: Path | None = Path("outputs/classifier/classifier32")  # skipped when missing
    guidance_scale: float = 7.5
    anneal_fraction: float = 1.0  # t upper bound annealed 0.98 -> 0.5 over this fraction of the steps
    turntable_frames: int = 48
    distill: DistillConfig = field(default_factory=DistillConfig)


def distill_score(config: DistillScoreConfig) -> dict:
    for key, table in (("guidance", GUIDANCES), ("target", TARGETS)):
        if getattr(config, key) not in table:
            raise DataError(None, key, f"'{getattr(config, key)}' is not one of {sorted(table)}")
    d = config.distill
    name = config.name or f"{d.prompt}_{config.guidance}_{config.target}_s{d.seed}"
    run = RunDir.create("score", name, root=config.root)
    run.save_config(config)
    prior = load_prior(config.prior)
    torch.manual_seed(d.seed)  # the guidance's estimator initialisation: same seed, same run
    guidance = make_guidance(config.guidance, prior, guidance_scale=config.guidance_scale, t_max=0.98,
                             t_max_end=0.5, anneal_steps=int(config.anneal_fraction * d.steps))
    target, render_eval = TARGETS[config.target](d.seed)
    ScoreDistiller(prior, guidance, [target], d).run(run)
    with torch.no_grad():
        views = render_eval(turntable_cameras(8, d.render_size))
        frames = render_eval(turntable_cameras(config.turntable_frames, d.render_size))
    save_png(run.file("views.png"), image_grid([list(rearrange(views, "v c h w -> v h w c"))]))
    video = (rearrange(frames, "f c h w -> f h w c").clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    iio.imwrite(run.file("turntable.gif"), video, duration=50, loop=0)
    metrics = {"saturation": saturation(views), "views_png": str(run.file("views.png"))}
    if config.classifier is not None and config.classifier.is_dir() and isinstance(prior, PixelPrior):
        classifier, classes = load_classifier(config.classifier)
        metrics["recognition"] = recognition(classifier, views, classes.index(d.prompt))
    run.save_metrics(metrics)
    run.close()
    return metrics
