"""3D-awareness probes of the teacher, the 2D-only control, the splat-and-distill student, the FiT3D student
and the oracle splat student (dataset depth, label-guided upsampling), over seeds.

    python scripts/eval_3d_awareness.py --quick                  # the quick preset, seeds 0 1 2
    python scripts/eval_3d_awareness.py --seeds 0 1 2            # the full default setting
    python scripts/eval_3d_awareness.py --name e1 --run.distill.steps 600
    python scripts/eval_3d_awareness.py --seeds 0 --output s0.json      # one process per seed, then
    python scripts/eval_3d_awareness.py --combine s0.json s1.json s2.json --output 3d_awareness.json

Per seed it trains what it needs (self-supervised teacher, depth predictor, the four students; runs under
<output-root>/splat_distill/<name>_s<seed>_*, resumed when rerun), probes every row on held-out worlds
and writes the mean and std over the seeds to outputs/bench/3d_awareness.json (and .png).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from avfm.splat_distill import SplatRunConfig, run_defaults
from lab.eval.awareness import combine, compare_3d_awareness, quick_config
from scene3d.cli import run_cli
from scene3d.config import check


@dataclass
class EvalConfig:
    quick: bool = False  # the quick preset (replaces `run`)
    seeds: tuple[int, ...] = (0, 1, 2)
    combine: tuple[Path, ...] = ()  # merge these results of disjoint seeds into --output instead of running
    output: Path = Path("outputs/bench/3d_awareness.json")
    run: SplatRunConfig = field(default_factory=lambda: SplatRunConfig(run=run_defaults(name="eval")))

    def __post_init__(self) -> None:
        check(self)
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")


def main(cfg: EvalConfig) -> None:
    if cfg.combine:
        out = combine(list(cfg.combine), cfg.output)
    else:
        run = quick_config(cfg.run.run.output_root, "eval_quick") if cfg.quick else cfg.run
        out = compare_3d_awareness(run, list(cfg.seeds), cfg.output)
    print(out["markdown"])
    print(json.dumps({"target_met": out["target_met"], "seconds": out["seconds"]}, indent=2))


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(EvalConfig)))
