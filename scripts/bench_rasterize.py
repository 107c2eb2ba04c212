"""Benchmark: the compiled CPU rasterizer vs the tiled torch one vs the brute-force dense reference, side
by side in one run (fwd+bwd at several sizes, feature channels, threads, a fit_splats step).

    python scripts/bench_rasterize.py --quick      # < 5 min on 2 cores
    python scripts/bench_rasterize.py              # full sizes and repeats

Writes outputs/bench/rasterize.json and prints the ratios (`lab.bench.rasterize`).
"""

import tyro

from lab.bench.rasterize import BenchConfig, run_bench
from scene3d.cli import run_cli

if __name__ == "__main__":
    run_cli(lambda: run_bench(tyro.cli(BenchConfig)))
