"""Benchmark the four field architectures side by side and write outputs/bench/fields.json.

    python scripts/bench_fields.py --quick   # under 5 minutes on 2 cores
    python scripts/bench_fields.py           # 64x64, 10 minutes per architecture (the targets)
"""

from __future__ import annotations

import tyro

from lab.bench.fields import BenchConfig, run_bench
from scene3d.cli import run_cli

if __name__ == "__main__":
    run_cli(lambda: run_bench(tyro.cli(BenchConfig)))
