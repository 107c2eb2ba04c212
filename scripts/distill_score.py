"""Distil a prompt into a 3D target (a radiance field or Gaussian splats) with a score-distillation guidance.

    python scripts/distill_score.py --guidance vsd --target splats --prompt torus
    python scripts/distill_score.py --guidance sds --target field --targets.field.arch hashgrid --prompt box
    python scripts/distill_score.py --prior /models/stable-diffusion-v1-5 --prompt "a torus" --render-size 64
    python scripts/distill_score.py --prompt box --name box_run --output-root outputs --checkpoint-every 50

Writes <output-root>/score/<name>/ (name: <prompt>_<guidance>_<target>_s<seed>: config, TensorBoard,
checkpoints, views.png, turntable.gif, splats.ply or mesh.ply, metrics.json with saturation and, with a
classifier run, the recognition of 8 views). Re-running with the same --name resumes from its latest checkpoint.
"""

import tyro

from scene3d.cli import run_cli
from scene3d.distill.score.run import DistillScoreConfig, distill_score

if __name__ == "__main__":
    run_cli(lambda: print(distill_score(tyro.cli(DistillScoreConfig))))
