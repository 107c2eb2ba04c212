"""Fit a 3D Gaussian splatting scene to a multi-view dataset.

    python scripts/fit_splats.py --data outputs/worlds/default --name w0
    python scripts/fit_splats.py                      # the default synthetic world, in memory
    python scripts/fit_splats.py --preset cpu10min    # the issue's 28 dB / 10 min benchmark (flags still override)
    python scripts/fit_splats.py --name w0 --stop-after 500   # 500 more steps, then a checkpoint; rerun to go on

Writes outputs/splats/<name>/ (config, TensorBoard, checkpoints, metrics.json with test PSNR / SSIM,
the test PSNR timeline and the training seconds to 25 and 28 dB, renders, turntable, scene.ply);
rerunning the same --name resumes from the newest checkpoint. Presets: see `PRESETS` in
scene3d/gaussians/train.py.
"""

import argparse
import json
import sys

import tyro

from scene3d.cli import run_cli
from scene3d.gaussians.train import PRESETS, FitConfig, fit_splats


def parse(argv: list[str]) -> FitConfig:
    """`--preset NAME` picks the starting config; every other flag overrides it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default="default")
    known, rest = pre.parse_known_args(argv)
    return tyro.cli(FitConfig, default=PRESETS[known.preset](), args=rest,
                    description=f"{__doc__}\n--preset {{{','.join(sorted(PRESETS))}}} (default: default)")


def main(config: FitConfig) -> None:
    _, metrics = fit_splats(config)
    print(json.dumps({k: v for k, v in metrics.items() if k != "timeline"}, indent=2))


if __name__ == "__main__":
    run_cli(lambda: main(parse(sys.argv[1:])))
