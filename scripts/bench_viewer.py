"""Viewer benchmarks, each side by side in one run.

    python scripts/bench_viewer.py frames    # preview vs full frame: outputs/bench/viewer.json
    python scripts/bench_viewer.py splats    # a 300k-Gaussian PLY in headless Chromium, browser-drawn splats
                                             # vs server rasterization: outputs/bench/viewer_splats.json
"""

import json
from typing import Annotated

import tyro

from lab.bench.viewer import BenchConfig, SplatBenchConfig, run_bench, run_splat_bench
from scene3d.checkpoint import atomic_write_json
from scene3d.cli import run_cli
from scene3d.runs import OUTPUTS


def frames(config: BenchConfig) -> None:
    result = run_bench(config)
    for name in ("preview", "full"):
        r = result[name]
        print(f"{name:8s} {r['width']}x{r['height']} q{r['jpeg_quality']}: {r['seconds'] * 1000:.1f} ms, "
              f"{r['bytes'] / 1024:.1f} KiB")
    print(f"full / preview: {result['full_over_preview_seconds']:.1f}x time, "
          f"{result['full_over_preview_bytes']:.1f}x bytes")
    path = atomic_write_json(OUTPUTS / "bench" / "viewer.json", json.loads(json.dumps(result)))
    print(f"wrote {path}")


def splats(config: SplatBenchConfig) -> None:
    result = run_splat_bench(config, OUTPUTS / "bench")
    for name in ("splats_browser", "server_rasterized"):
        r = result[name]
        sent = "" if r["server_frame_sent_seconds"] is None else \
            f", server frame sent at {r['server_frame_sent_seconds']:.1f} s"
        print(f"{name:18s} buffer {r['buffer']:6s}: first sharp frame on screen {r['first_sharp_frame_seconds']:.1f} s "
              f"(file opened and served in {r['open_seconds']:.1f} s{sent}), browser {r['browser_fps_at_rest']:.1f} "
              "fps at rest")
    print(f"{result['gaussians']:,} Gaussians: the browser-drawn first frame is "
          f"{result['speedup_first_sharp_frame']:.1f}x sooner")
    path = atomic_write_json(OUTPUTS / "bench" / "viewer_splats.json", json.loads(json.dumps(result)))
    print(f"wrote {path}")


def main(config: BenchConfig | SplatBenchConfig) -> None:
    (frames if isinstance(config, BenchConfig) else splats)(config)


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(Annotated[BenchConfig, tyro.conf.subcommand("frames")]
                                  | Annotated[SplatBenchConfig, tyro.conf.subcommand("splats")])))
