"""Benchmark volume distillation against fitting from scratch; writes outputs/bench/pvd.json and a
PSNR-vs-wall-time plot outputs/bench/pvd.png.

    python scripts/bench_pvd.py --quick                            # under 10 minutes on 2 cores
    python scripts/bench_pvd.py                                    # 64x64, the full comparison
    python scripts/bench_pvd.py --teachers-dir outputs/fields      # reuse fitted teachers
"""

from __future__ import annotations

import tyro

from lab.bench.pvd import PVDBenchConfig, run_bench
from scene3d.cli import run_cli

if __name__ == "__main__":
    run_cli(lambda: run_bench(tyro.cli(PVDBenchConfig)))
