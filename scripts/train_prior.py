"""Train the small class-conditional pixel diffusion prior on renders of synthetic objects.

    python scripts/train_prior.py                      # 32x32, CPU-sized, outputs/prior/objects32/
    python scripts/train_prior.py --steps 200 --name quick --output-root outputs
    python scripts/train_prior.py --prior.resolution 64 --prior.block-out-channels 128 256 256 256 \
        --prior.layers-per-block 2 --prior.norm-num-groups 32 --batch-size 128 --steps 50000   # GPU

Re-running with the same --name resumes from the latest checkpoint (--stop-after N ends an invocation
after N steps; --no-resume starts afresh).
"""

import tyro

from scene3d.cli import run_cli
from scene3d.diffusion.train_prior import TrainPriorConfig, train_prior


def main(config: TrainPriorConfig) -> None:
    run = train_prior(config)
    if (run.path / "prior" / "prior.json").is_file():
        print(f"prior saved to {run.path / 'prior'}; samples: {run.path / 'samples_final.png'}")
    else:
        print(f"stopped before step {config.steps}; rerun the same command to continue ({run.path})")


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(TrainPriorConfig)))
