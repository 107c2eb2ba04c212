"""Evaluate a pretrained CanViT run with frozen probes (mIoU / top-1 per glimpse and policy).

python scripts/eval_avfm.py --run-dir outputs/avfm/tiny --steps 10 --name tiny
python scripts/eval_avfm.py --canvit ~/weights/canvit-vitb16 --data.resolution 512 --teacher-path ~/weights/dinov3
"""

import json

import tyro

from avfm.evaluate import EvalConfig, run_evaluation, summarize
from scene3d.cli import run_cli


def main() -> None:
    metrics = run_evaluation(tyro.cli(EvalConfig))
    print(json.dumps({"run_dir": metrics["run_dir"], **summarize(metrics)}, indent=2))


if __name__ == "__main__":
    run_cli(main)
