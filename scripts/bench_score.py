"""Guidance steps per second on 64x64 renders, every registered guidance side by side.

    python scripts/bench_score.py --prior outputs/prior/objects32   # or a Stable Diffusion folder
    python scripts/bench_score.py                                     # an untrained default-size prior

Writes outputs/bench/score_guidance.json. Timings are from one run on this machine, not assertions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import tyro

from lab.eval.score import guidance_speed
from scene3d.checkpoint import atomic_write_json
from scene3d.cli import run_cli
from scene3d.config import Range, check
from scene3d.diffusion import PixelPrior, PixelPriorConfig, load_prior


@dataclass
class BenchConfig:
    prior: Path | None = None
    render_size: Annotated[int, Range(1, 4096)] = 64
    batch_size: Annotated[int, Range(1)] = 4
    steps: Annotated[int, Range(1)] = 10
    out: Path = Path("outputs/bench/score_guidance.json")

    def __post_init__(self) -> None:
        check(self)


def main(config: BenchConfig) -> None:
    prior = load_prior(config.prior) if config.prior else PixelPrior(PixelPriorConfig()).freeze()
    results = guidance_speed(prior, size=config.render_size, batch=config.batch_size, steps=config.steps)
    base = results["sds"]
    for name, rate in results.items():
        print(f"{name:4s} {rate:7.2f} steps/s  ({rate / base:.2f}x sds)")
    atomic_write_json(config.out, {"render_size": config.render_size, "batch_size": config.batch_size,
                                   "torch_threads": torch.get_num_threads(), "steps_per_second": results})


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(BenchConfig)))
