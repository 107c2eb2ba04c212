"""Pretrain CanViT by passive-to-active dense latent distillation.

python scripts/train_avfm.py --model canvit_tiny --steps 400 --name tiny
python scripts/train_avfm.py --model canvit_tiny --steps 800 --name tiny   # continues the run to 800 steps
torchrun --nproc_per_node 2 scripts/train_avfm.py --data.source toy --name ddp   # gloo on CPU
"""

import json

import tyro

from avfm.train import TrainConfig, train
from scene3d.cli import run_cli

if __name__ == "__main__":
    run_cli(lambda: print(json.dumps(train(tyro.cli(TrainConfig)), indent=2)))
