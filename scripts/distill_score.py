"""Distil a prompt into a 3D target with a score-distillation guidance.

    python scripts/distill_score.py --guidance vsd --target voxels --distill.prompt torus
    python scripts/distill_score.py --prior /models/stable-diffusion-v1-5 --distill.prompt "a torus" \
        --distill.render-size 64

Writes outputs/score/<name>/ (config, TensorBoard, views.png, turntable.gif, metrics.json).
"""

import tyro

from scene3d.cli import run_cli
from scene3d.distill.run_score import DistillScoreConfig, distill_score

if __name__ == "__main__":
    run_cli(lambda: print(distill_score(tyro.cli(DistillScoreConfig))))
