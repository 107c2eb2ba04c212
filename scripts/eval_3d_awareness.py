"""3D-awareness probes (Probe3D-style) of teacher, FiT3D-style student and splat-and-distill student.

    python scripts/eval_3d_awareness.py --quick        # a few minutes on 2 cores
    python scripts/eval_3d_awareness.py                # the full default setting
    python scripts/eval_3d_awareness.py --name e1 --run.distill.steps 600

Trains what it needs (teacher, both students; runs under <output-root>/splat_distill/<name>_fit3d and
_splat, resumed when rerun), probes all three on held-out worlds and writes outputs/bench/3d_awareness.json.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from avfm.splat_distill import SplatRunConfig, run_defaults
from lab.eval.awareness import compare_3d_awareness, quick_config
from scene3d.cli import run_cli
from scene3d.config import check


@dataclass
class EvalConfig:
    quick: bool = False  # the quick preset (replaces `run`)
    output: Path = Path("outputs/bench/3d_awareness.json")
    run: SplatRunConfig = field(default_factory=lambda: SplatRunConfig(run=run_defaults(name="eval")))

    def __post_init__(self) -> None:
        check(self)


def main(cfg: EvalConfig) -> None:
    run = quick_config(cfg.run.run.output_root, "eval_quick") if cfg.quick else cfg.run
    out = compare_3d_awareness(run, cfg.output)
    print(out["markdown"])
    print(json.dumps({"target_met": out["target_met"], "seconds": out["seconds"]}, indent=2))


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(EvalConfig)))
