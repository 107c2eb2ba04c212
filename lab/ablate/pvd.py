"""Per-step ablation of volume distillation: one fixed teacher, the same student trained for a few
hundred steps under each variant (and fitted from scratch to the ground truth at the same batch),
test PSNR against the ground truth and against the teacher every `eval_every` steps.

    python scripts/ablate_pvd.py --teacher outputs/fields/hashgrid --student mlp --steps 300
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import torch

from scene3d.config import Choice, Range, check
from scene3d.distill.volume.active import Shell
from scene3d.distill.volume.distiller import EvalViews, LevelWeights, VolumeDistillConfig, VolumeDistiller
from scene3d.distill.volume.run import load_teacher
from scene3d.fields.base import FIELDS
from scene3d.fields.train import FieldTrainer, FitConfig, load_data
from scene3d.train import Stepper

# name -> overrides of the PVD-AL defaults (all at once, camera + ray + point active learning) with
# the background of `AblateConfig.random_background`
VARIANTS: dict[str, dict] = {
    "pvd_al": {},
    "no_active": {"active": ""},
    "pvd_staged": {"active": "", "schedule": "staged"},
    "no_inherit": {"inherit": False},
    "adapter": {"feature_level": "adapter"},
    "rgb_only": {"active": "", "weights": LevelWeights(feature=0.0, density=0.0, color=0.0)},
    "no_feature": {"active": "", "weights": LevelWeights(feature=0.0)},
    "no_decoded": {"active": "", "weights": LevelWeights(density=0.0, color=0.0)},
    "random_background": {"random_background": True},
    "rgb_only_free_density": {"active": "", "weights": LevelWeights(feature=0.0, density=0.0, color=0.0),
                              "density_clamp": None},
    "point_levels_1": {"active": "", "weights": LevelWeights(feature=1.0, density=1.0, color=1.0)},
    "pvd_staged_al": {"schedule": "staged"},
    "pvd_staged_image_ray": {"schedule": "staged", "active": "image,ray"},
    "pvd_staged_point": {"schedule": "staged", "active": "point"},
    "rgb_only_no_occupancy": {"active": "", "weights": LevelWeights(feature=0.0, density=0.0, color=0.0),
                              "use_occupancy": False},
}


@dataclass
class AblateConfig:
    teacher: Path = Path("outputs/fields/hashgrid")
    student: Annotated[str, Choice(FIELDS)] = "mlp"
    preset: Annotated[str, Choice(("default", "paper"))] = "default"
    variants: Annotated[tuple[str, ...], Choice(VARIANTS)] = tuple(VARIANTS)
    scratch: bool = True
    steps: Annotated[int, Range(1)] = 300
    eval_every: Annotated[int, Range(1)] = 100
    batch_rays: Annotated[int, Range(1)] = 512
    n_samples: Annotated[int, Range(1, 4096)] = 64
    image_size: Annotated[int, Range(1, 4096)] = 64
    out: Path = Path("outputs/bench/pvd_ablation.json")
    seed: int = 0

    def __post_init__(self) -> None:
        check(self)


def run_ablation(c: AblateConfig) -> dict:
    torch.set_num_threads(1)
    teacher, _ = load_teacher(c.teacher)
    fit = FitConfig(field=c.student, preset=c.preset, head=teacher.config.head, image_size=c.image_size,
                    n_test_views=4, batch_rays=c.batch_rays, n_samples=c.n_samples, steps=c.steps, device="cpu",
                    seed=c.seed)
    train, test = load_data(fit)
    results: dict = {"config": {k: str(v) for k, v in vars(c).items()}, "runs": {}}
    runs = ([("scratch", None)] if c.scratch else []) + [(v, VARIANTS[v]) for v in c.variants]
    for name, overrides in runs:
        torch.manual_seed(c.seed)
        if overrides is None:
            trainer = FieldTrainer(fit, train, test)
            step, evaluate = Stepper(trainer), trainer.evaluate
        else:
            config = replace(VolumeDistillConfig(student=c.student, preset=c.preset, steps=c.steps,
                                                 batch_rays=c.batch_rays, n_samples=c.n_samples, device="cpu",
                                                 seed=c.seed), **overrides)
            views = EvalViews(test.cameras, test.background.float(), ground_truth=test.images)
            distiller = VolumeDistiller(config, teacher, Shell.from_cameras(train.cameras), views)
            step, evaluate = Stepper(distiller), distiller.evaluate
        cpu, timeline = 0.0, []
        for i in range(1, c.steps + 1):
            start = time.process_time()
            step()
            cpu += time.process_time() - start
            if i % c.eval_every == 0:
                m = evaluate()[0]
                timeline.append({"step": i, "cpu_seconds": round(cpu, 2), "test_psnr": round(m["test_psnr"], 3),
                                 "psnr_vs_teacher": round(m.get("psnr_vs_teacher", float("nan")), 3)})
        results["runs"][name] = timeline
        print(name, json.dumps(timeline), flush=True)
        c.out.parent.mkdir(parents=True, exist_ok=True)
        c.out.write_text(json.dumps(results, indent=1))
    return results

