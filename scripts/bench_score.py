"""Guidance steps per second on 64x64 renders, every registered guidance side by side.

    python scripts/bench_score.py --prior outputs/prior/objects32   # or a Stable Diffusion folder
    python scripts/bench_score.py                                     # an untrained default-size prior

Writes outputs/bench/score_guidance.json. Timings are from one run on this machine, not assertions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from scene3d.checkpoint import atomic_write_json
from scene3d.cli import run_cli
from scene3d.diffusion import PixelPrior, PixelPriorConfig, load_prior
from scene3d.distill.score import GUIDANCES, make_guidance
from scene3d.distill.views import random_cameras


@dataclass
class BenchConfig:
    prior: Path | None = None
    render_size: int = 64
    batch_size: int = 4
    steps: int = 10
    out: Path = Path("outputs/bench/score_guidance.json")


def main(config: BenchConfig) -> None:
    prior = load_prior(config.prior) if config.prior else PixelPrior(PixelPriorConfig()).freeze()
    prompt = prior.config.classes[0] if isinstance(prior, PixelPrior) else "a sphere"
    b = config.batch_size
    cond, null = prior.condition(prompt, b), prior.null_condition(b)
    cams, _ = random_cameras(b, config.render_size)
    results = {}
    for name in GUIDANCES:
        guidance = make_guidance(name, prior)
        images = torch.rand(b, 3, config.render_size, config.render_size, requires_grad=True)
        guidance(images, cond, null, cameras=cams).loss.backward()  # warm-up
        start = time.perf_counter()
        for step in range(config.steps):
            guidance(images, cond, null, step, cameras=cams).loss.backward()
        results[name] = config.steps / (time.perf_counter() - start)
    base = results["sds"]
    for name, rate in results.items():
        print(f"{name:4s} {rate:7.2f} steps/s  ({rate / base:.2f}x sds)")
    atomic_write_json(config.out, {"render_size": config.render_size, "batch_size": b,
                                   "torch_threads": torch.get_num_threads(), "steps_per_second": results})


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(BenchConfig)))
