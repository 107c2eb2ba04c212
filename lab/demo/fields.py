"""The `make demo` stage of the fields: fit a field to the demo world, report test PSNR, save renders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scene3d.fields.train import FitConfig, fit_field, load_data
from scene3d.train import RunConfig

DEMO_FIELD = "tensorf"
DEMO_HEAD = "pvd"  # PVD's shared decoders, which the volume stage's student inherits


def run_stage(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Fit `DEMO_FIELD` (with PVD's shared head) to the dataset the world stage wrote to `out_dir/world`
    (the synthetic world is rendered afresh when it is missing). Writes `out_dir/fields/<field>/` and
    returns its metrics."""
    data = Path(out_dir) / "world"
    config = FitConfig(field=DEMO_FIELD, head=DEMO_HEAD, data=data if data.is_dir() else None,
                       steps=300 if quick else 1000,
                       batch_rays=1024, n_samples=48 if quick else 64, turntable_frames=12 if quick else 36,
                       image_size=32 if quick else 64,
                       run=RunConfig(output_root=Path(out_dir), eval_every=100 if quick else 250, checkpoint_every=500,
                                     resume=False))
    train, test = load_data(config)
    _, metrics = fit_field(config, train, test)
    run = Path(out_dir) / "fields" / config.run_name
    print(f"   field {DEMO_FIELD}: test PSNR {metrics['test_psnr']:.2f} dB, SSIM {metrics['test_ssim']:.3f} "
          f"({metrics['steps']} steps, {metrics['train_seconds']:.0f} s)")
    return {"field": DEMO_FIELD, "test_psnr": round(metrics["test_psnr"], 3),
            "test_ssim": round(metrics["test_ssim"], 4), "steps": metrics["steps"],
            "train_seconds": round(metrics["train_seconds"], 1), "renders": str(run / "renders"),
            "turntable": str(run / "turntable.mp4")}
