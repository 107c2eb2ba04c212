"""Distil each prompt with each guidance into each target and score it (recognition of 8 views by an
independent classifier, saturation vs the training renders, diversity across seeds, wall time,
guidance steps/s at 64x64); writes outputs/bench/score.json and a PNG of the turntable views.

    python scripts/eval_score.py --quick                                   # < 10 min on 2 cores
    python scripts/eval_score.py --targets field splats --guidances sds vsd --seeds 2 --steps 150
    python scripts/eval_score.py --guidances ism tsm --targets splats
"""

import tyro

from lab.eval.score import EvalScoreConfig, evaluate_score
from scene3d.cli import run_cli

if __name__ == "__main__":
    run_cli(lambda: evaluate_score(tyro.cli(EvalScoreConfig)))
