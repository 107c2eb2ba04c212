"""`make demo` stage for score distillation: the pixel prior teaches 3D students.

Uses the prior and the classifier the `prior` demo stage trained in `out_dir` (`prior/prior`,
`classifier/classifier`); trains a tiny prior and classifier of its own when they are missing (then
the objects are not meant to be recognisable, the stage only shows the pipeline). Quick mode: one
Gaussian scene distilled with SDS (views, turntable, PLY). Full mode: SDS into a Gaussian scene and VSD
into a field (PLY and mesh exports), each labelled by the independent classifier and given the shape
check (nearest primitive family, tunnels: does the torus have its hole); `scripts/eval_score.py` runs the
whole guidance x target table.
"""

from __future__ import annotations

import time
from pathlib import Path

from scene3d.diffusion.classifier import ClassifierConfig, train_classifier
from scene3d.diffusion.train_prior import TrainPriorConfig, train_prior
from scene3d.distill.score.distiller import DistillConfig
from scene3d.distill.score.run import DistillScoreConfig, distill_score
from scene3d.runs import RunDir
from scene3d.train import RunConfig


def _ensure_prior(out_dir: Path) -> tuple[Path, Path, bool]:
    """(prior run dir, classifier run dir, whether they were trained here as stand-ins)."""
    prior, classifier = out_dir / "prior" / "prior", out_dir / "classifier" / "classifier"
    if (prior / "prior" / "prior.json").is_file() and RunDir(classifier).latest_checkpoint() is not None:
        return prior, classifier, False
    prior_run = train_prior(TrainPriorConfig(steps=30, n_objects_per_class=4, views_per_object=4, sample_every=0,
                                             samples_per_class=2, sample_steps=10,
                                             run=RunConfig(name="score_standin", output_root=out_dir, resume=False)))
    train_classifier(ClassifierConfig(steps=30, n_objects_per_class=4, n_val_objects_per_class=2,
                                      run=RunConfig(name="score_standin", output_root=out_dir, resume=False)))
    return prior_run.path, out_dir / "classifier" / "score_standin", True


def run_stage(out_dir: Path, quick: bool) -> dict:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    prior, classifier, standin = _ensure_prior(out_dir)
    runs = [("sds", "splats")] if quick else [("sds", "splats"), ("vsd", "field")]
    metrics: dict = {"prior": str(prior), "standin_prior": standin, "runs": {}}
    for guidance, target in runs:
        config = DistillScoreConfig(prior=prior, guidance=guidance, target=target, classifier=classifier,
                                    turntable_frames=12 if quick else 36, view_size=32 if quick else 64,
                                    distill=DistillConfig(prompt="torus", steps=40 if quick else 150),
                                    run=RunConfig(output_root=out_dir, log_every=10, eval_every=0, resume=False))
        result = distill_score(config)
        metrics["runs"][f"{guidance}/{target}"] = {k: result[k] for k in (
            "recognition", "saturation", "shape", "shape_pass", "seconds", "views_png", "turntable", "ply", "mesh")
            if k in result}
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    RunDir(out_dir).save_metrics(metrics, "score_stage.json")
    return metrics
