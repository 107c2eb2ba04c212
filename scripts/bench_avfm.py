"""CanViT benchmark; writes outputs/bench/avfm.json.  `python scripts/bench_avfm.py --quick` (< 5 min)."""

import json
from pathlib import Path

import tyro

from lab.bench.avfm import BenchConfig, run_bench
from scene3d.checkpoint import atomic_write_json
from scene3d.cli import run_cli


def main() -> None:
    cfg = tyro.cli(BenchConfig)
    result = run_bench(cfg)
    atomic_write_json(Path(cfg.out), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run_cli(main)
