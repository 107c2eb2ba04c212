"""Distil a prompt into a 3D target (a radiance field or Gaussian splats) with a score-distillation guidance.

    python scripts/distill_score.py --guidance vsd --target splats --prompt torus
    python scripts/distill_score.py --guidance sds --target field --targets.field.arch hashgrid --prompt box
    python scripts/distill_score.py --prior /models/stable-diffusion-v1-5 --prompt "a torus" --render-size 64

Writes outputs/score/<name>/ (config, TensorBoard, views.png, turntable.gif, splats.ply or mesh.ply,
metrics.json with saturation and, with a classifier run, the recognition of 8 views).
"""

import tyro

from scene3d.cli import run_cli
from scene3d.distill.score.run import DistillScoreConfig, distill_score

if __name__ == "__main__":
    run_cli(lambda: print(distill_score(tyro.cli(DistillScoreConfig))))
