"""The app's main job on the embedded default data, stage by stage (`lab.demo.STAGES`).

    python scripts/demo.py           # full size (make demo)
    python scripts/demo.py --quick   # the same pipeline at CI size (make demo-quick)
    python scripts/demo.py --stages prior score   # only these (later stages read earlier ones' outputs)

Writes everything under outputs/demo/ (or --out) and a summary.json of every stage's metrics.
"""

import tyro

from lab.demo import DemoConfig, run_demo
from scene3d.cli import run_cli

if __name__ == "__main__":
    run_cli(lambda: run_demo(tyro.cli(DemoConfig)))
