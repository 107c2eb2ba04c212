"""Distil each prompt with each guidance into each target over seeds and judge it against the untrained
initial object: recognition gain (independent classifier, 8 views), the shape check (nearest primitive
family by Chamfer distance, tunnels: a torus has a hole), saturation vs the training renders, CPU minutes;
writes outputs/bench/score.json (records, mean / std / per-seed summary), the turntables and a table PNG.

    python scripts/eval_score.py --quick                                   # torus, one seed, 30 steps
    python scripts/eval_score.py                     # 4 guidances x (field, splats) x 4 classes x seeds 0 1 2
    python scripts/eval_score.py --targets field --seeds 0 1 --out a.json  # split across processes ...
    python scripts/eval_score.py --combine a.json b.json --out all.json    # ... and merge
"""

import tyro

from lab.eval.score import EvalScoreConfig, evaluate_score
from scene3d.cli import run_cli

if __name__ == "__main__":
    run_cli(lambda: evaluate_score(tyro.cli(EvalScoreConfig)))
