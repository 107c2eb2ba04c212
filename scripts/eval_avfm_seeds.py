"""The demo's CanViT experiment over seeds: per seed a self-supervised teacher and a CanViT pretrained with
it, then probes per glimpse and policy with every control, as mean and std over the seeds.

python scripts/eval_avfm_seeds.py --seeds 0 1 2   # -> outputs/avfm_eval/demo_seeds/{metrics.json,miou.png,top1.png}
"""

import json

import tyro

from avfm.evaluate import summarize
from lab.eval.avfm_seeds import SeedsConfig, run_seeds
from scene3d.cli import run_cli


def main() -> None:
    metrics = run_seeds(tyro.cli(SeedsConfig))
    print(json.dumps({"run_dir": metrics["run_dir"], **summarize(metrics)}, indent=2))


if __name__ == "__main__":
    run_cli(main)
