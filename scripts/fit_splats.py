"""Fit a 3D Gaussian splatting scene to a multi-view dataset.

    python scripts/fit_splats.py --data outputs/worlds/default --name w0
    python scripts/fit_splats.py                      # the default synthetic world, in memory

Writes outputs/splats/<name>/ (config, TensorBoard, checkpoints, metrics.json, renders, turntable,
scene.ply); rerunning the same --name resumes from the newest checkpoint.
"""

import json

import tyro

from scene3d.cli import run_cli
from scene3d.gaussians.train import FitConfig, fit


def main(config: FitConfig) -> None:
    metrics = fit(config)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(FitConfig)))
