"""Preview versus full-quality frames of the viewer's progressive renderer, side by side.

    python scripts/bench_viewer.py            # prints the ratios, writes outputs/bench/viewer.json
"""

import json

import tyro

from lab.bench.viewer import BenchConfig, run_bench
from scene3d.checkpoint import atomic_write_json
from scene3d.cli import run_cli
from scene3d.runs import OUTPUTS


def main(config: BenchConfig) -> None:
    result = run_bench(config)
    for name in ("preview", "full"):
        r = result[name]
        print(f"{name:8s} {r['width']}x{r['height']} q{r['jpeg_quality']}: {r['seconds'] * 1000:.1f} ms, "
              f"{r['bytes'] / 1024:.1f} KiB")
    print(f"full / preview: {result['full_over_preview_seconds']:.1f}x time, "
          f"{result['full_over_preview_bytes']:.1f}x bytes")
    path = atomic_write_json(OUTPUTS / "bench" / "viewer.json", json.loads(json.dumps(result)))
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(BenchConfig)))
