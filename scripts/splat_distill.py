"""Splat and Distill: distil a dense 2D teacher into a 3D-aware student through feed-forward Gaussian lifting.

    python scripts/splat_distill.py --name s0                                  # self-supervised teacher
    python scripts/splat_distill.py --name f0 --distill.target-source fit3d    # FiT3D baseline
    python scripts/splat_distill.py --name c0 --distill.target-source 2d       # the 2D-only control
    python scripts/splat_distill.py --teacher.name dinov2 --teacher.path /models/dinov2-small --name d0

Writes outputs/splat_distill/<name>/ (config, TensorBoard, checkpoints, the depth predictor's run in mvs/,
loss.png, student.safetensors,
metrics.json with teacher / student probes); rerunning the same --name resumes exactly (--stop-after,
--max-minutes end an invocation early, --no-resume starts afresh).
"""

import json

import tyro

from avfm.splat_distill import SplatRunConfig, run_splat_distill
from scene3d.cli import run_cli


def main(cfg: SplatRunConfig) -> None:
    metrics = run_splat_distill(cfg)
    metrics.pop("student")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(SplatRunConfig)))
