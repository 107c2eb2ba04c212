"""The `make demo` stage of volume distillation: convert the demo's fitted field into another
architecture with PVD-AL and report how close the student gets to its teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab.demo.fields import DEMO_FIELD, DEMO_HEAD
from scene3d.distill.volume.run import DistillVolumeConfig, distill_volume
from scene3d.fields.train import FitConfig, fit_field, load_data
from scene3d.runs import RunDir
from scene3d.train import RunConfig

DEMO_STUDENT = "mlp"
# The MLP's own rate (5e-3) is for fitting from scratch over thousands of steps; the stage's 300 steps
# from inherited decoders go further at 1e-2 (test PSNR 25.0 against 23.2 dB, the full demo's teacher).
DEMO_STUDENT_LR = 1e-2


def demo_teacher(out_dir: Path, quick: bool) -> Path:
    """The fields stage's run directory (`out_dir/fields/<DEMO_FIELD>`) when it holds a checkpoint;
    otherwise a small teacher fitted here to `out_dir/world` (or the synthetic world)."""
    fitted = out_dir / "fields" / DEMO_FIELD
    if RunDir(fitted).latest_checkpoint() is not None:
        return fitted
    data = out_dir / "world"
    config = FitConfig(field=DEMO_FIELD, head=DEMO_HEAD, data=data if data.is_dir() else None,
                       steps=150 if quick else 1000,
                       batch_rays=256 if quick else 1024, n_samples=32 if quick else 64, turntable_frames=0,
                       image_size=32 if quick else 64,
                       run=RunConfig(output_root=out_dir / "volume", eval_every=0, checkpoint_every=10**6,
                                     resume=False, progress=False))
    fit_field(config, *load_data(config))
    return out_dir / "volume" / "fields" / config.run_name


def run_stage(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Distil the demo's field into `DEMO_STUDENT`; writes `out_dir/distill/<teacher>_to_<student>/`
    (renders: ground truth | teacher | student | depth, student.safetensors) and returns its metrics."""
    out_dir = Path(out_dir)
    teacher = demo_teacher(out_dir, quick)
    world = out_dir / "world"
    config = DistillVolumeConfig(teacher=teacher, data=world if world.is_dir() else None, student=DEMO_STUDENT,
                                 steps=100 if quick else 300, batch_rays=512 if quick else 1024,
                                 n_samples=32 if quick else 64, eval_views=4, student_lr=DEMO_STUDENT_LR,
                                 run=RunConfig(output_root=out_dir, eval_every=0, checkpoint_every=10**6,
                                               resume=False, progress=not quick))
    distiller, metrics = distill_volume(config)
    run = out_dir / "distill" / f"{distiller.teacher.name}_to_{DEMO_STUDENT}"
    print(f"   volume distillation {distiller.teacher.name} -> {DEMO_STUDENT}: PSNR vs teacher "
          f"{metrics['psnr_vs_teacher']:.2f} dB, test PSNR {metrics.get('test_psnr', float('nan')):.2f} dB "
          f"(teacher {metrics.get('teacher_test_psnr', float('nan')):.2f} dB; {metrics['steps']} steps, "
          f"{metrics['train_seconds']:.0f} s)")
    keys = ("psnr_vs_teacher", "ssim_vs_teacher", "test_psnr", "test_ssim", "teacher_test_psnr")
    return {"teacher": distiller.teacher.name, "teacher_run": str(teacher), "student": DEMO_STUDENT,
            **{k: round(metrics[k], 3) for k in keys if k in metrics}, "steps": metrics["steps"],
            "train_seconds": round(metrics["train_seconds"], 1), "renders": str(run / "renders"),
            "student_checkpoint": str(run / "student.safetensors")}
