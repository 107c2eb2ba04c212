"""Evaluate a pretrained CanViT run with frozen probes (mIoU / top-1 per glimpse and policy).

python scripts/eval_avfm.py --run-dir outputs/avfm/tiny --steps 10 --name tiny
"""

import json
import sys

import tyro

from avfm.evaluate import EvalConfig, run_evaluation, summarize
from scene3d.errors import Scene3DError

if __name__ == "__main__":
    try:
        metrics = run_evaluation(tyro.cli(EvalConfig))
    except Scene3DError as err:  # bad input: one line naming the file and field, non-zero exit
        sys.exit(f"error: {err}")
    print(json.dumps({"run_dir": metrics["run_dir"], **summarize(metrics)}, indent=2))
