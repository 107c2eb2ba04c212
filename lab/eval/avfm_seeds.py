"""The demo's CanViT experiment over seeds (`scripts/eval_avfm_seeds.py`). Per seed, the whole pipeline
runs with that seed: the teacher's training (the self-supervised one by default) and CanViT's pretraining,
in `<output_root>/avfm/<name>_seed<k>/`; the scenes and the probes' seed stay fixed. Then one evaluation of
all runs (`avfm.evaluate.run_evaluation`): every curve and baseline as mean and std over the seeds, in
`<output_root>/avfm_eval/<name>/` (`metrics.json`, `miou.png`, `top1.png`). Finished runs are reloaded,
not retrained; a killed one resumes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from avfm.evaluate import run_evaluation
from avfm.train import train
from lab.demo.avfm import demo_configs
from scene3d.config import Range, check
from scene3d.runs import OUTPUTS


@dataclass
class SeedsConfig:
    seeds: Annotated[tuple[int, ...], Range(0)] = (0, 1, 2)
    name: str = "demo_seeds"
    output_root: Path = OUTPUTS
    quick: bool = False  # the quick demo's sizes (a smoke run)
    teacher: Literal["self_supervised", "supervised"] = "self_supervised"  # supervised: the label-trained option

    def __post_init__(self) -> None:
        check(self)
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError(f"--seeds: give distinct seeds, got {self.seeds}")


def run_seeds(cfg: SeedsConfig) -> dict:
    """Train (or reload) one run per seed, evaluate them together; returns the evaluation's metrics."""
    runs = []
    for seed in cfg.seeds:
        train_cfg, eval_cfg = demo_configs(cfg.output_root, cfg.quick)
        t = train_cfg.teacher
        teacher = dataclasses.replace(t, name=cfg.teacher, supervised=dataclasses.replace(t.supervised, seed=seed),
                                      self_supervised=dataclasses.replace(t.self_supervised, seed=seed))
        run = dataclasses.replace(train_cfg.run, name=f"{cfg.name}_seed{seed}")
        runs.append(train(dataclasses.replace(train_cfg, seed=seed, teacher=teacher, run=run))["run_dir"])
    return run_evaluation(dataclasses.replace(eval_cfg, run_dir=tuple(runs), name=cfg.name))
