"""The `make demo` stage of 3D Gaussians: fit splats to the demo world (PLY, mesh, renders, turntable)."""

from __future__ import annotations

from pathlib import Path

from scene3d.gaussians.strategy import DensifyStrategy
from scene3d.gaussians.train import FitConfig, fit_splats
from scene3d.train import RunConfig


def run_stage(out_dir: Path, quick: bool) -> dict:
    """`make demo` stage: fit splats to the demo world (out_dir/world when the world stage wrote it).
    Short runs densify over their first three quarters and never reset opacities: a reset needs
    ~1000 steps to recover (11.5 dB when it fell on the last of 1000 steps, 27.0 dB without)."""
    data = out_dir / "world"
    has_world = (data / "transforms_train.json").exists() or (data / "transforms.json").exists()
    steps = 300 if quick else 1000
    densify = DensifyStrategy(refine_start=100, refine_stop=steps * 3 // 4, refine_every=50 if quick else 100,
                              reset_every=10**9)
    cfg = FitConfig(data=data if has_world else None, steps=steps, n_init=2000 if quick else 5000, densify=densify,
                    turntable_frames=12 if quick else 36, world_views=(24, 2, 6) if quick else (60, 4, 8),
                    world_size=32 if quick else 64,
                    run=RunConfig(name="demo", output_root=out_dir, log_every=20, eval_every=10**9,
                                  checkpoint_every=500, resume=False, progress=not quick))
    return fit_splats(cfg)[1]
