"""Reliability in numbers: fuzzed readers, killed and resumed training scripts, the viewer under load.

    python scripts/bench_reliability.py --quick     # under 10 minutes: 200 cases per reader, 2 kills per script
    python scripts/bench_reliability.py             # 2000 cases per reader, 5 kills per script

Writes outputs/bench/reliability.json and prints the table quoted in docs/reliability.md.
"""

import tyro

from lab.reliability.bench import ReliabilityConfig, run_reliability_bench, table
from scene3d.cli import run_cli

if __name__ == "__main__":
    run_cli(lambda: print(table(run_reliability_bench(tyro.cli(ReliabilityConfig)))))
