"""Distil each prompt with each guidance into each target and score it (recognition, saturation,
diversity, speed); writes outputs/bench/score.json and a PNG of the turntable views.

    python scripts/eval_score.py --prior outputs/prior/objects32 --quick
    python scripts/eval_score.py --guidances sds vsd ism tsm --targets voxels image
"""

import tyro

from scene3d.cli import run_cli
from scene3d.distill.eval_score import EvalScoreConfig, evaluate_score

if __name__ == "__main__":
    run_cli(lambda: evaluate_score(tyro.cli(EvalScoreConfig)))
