"""Fit a radiance field to a multi-view dataset (or the synthetic demo world).

    python scripts/fit_field.py --field hashgrid --data outputs/demo/world
    python scripts/fit_field.py --field tensorf --steps 3000          # the synthetic world
    python scripts/fit_field.py --field mlp --preset paper --data DIR  # NeRF at paper size

Writes outputs/fields/<name>/ (config, TensorBoard, checkpoints, test renders, turntable.mp4,
metrics.json) and resumes from its latest checkpoint when run again.
"""

from __future__ import annotations

import tyro

from scene3d.cli import run_cli
from scene3d.fields.train import FitConfig, fit_field, load_data


def main(config: FitConfig) -> None:
    train, test = load_data(config)
    _, metrics = fit_field(config, train, test)
    print(f"{config.field}: test PSNR {metrics['test_psnr']:.2f} dB, SSIM {metrics['test_ssim']:.3f} "
          f"after {metrics['steps']} steps ({metrics['train_seconds']:.0f} s)")


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(FitConfig)))
