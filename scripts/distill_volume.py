"""Convert a trained radiance field into another architecture by progressive volume distillation
(PVD / PVD-AL): supervision from the teacher only, at embedding, decoded and rendered levels.

    python scripts/distill_volume.py --teacher outputs/fields/hashgrid --student mlp
    python scripts/distill_volume.py --teacher outputs/fields/tensorf --student grid --active image,ray,point
    python scripts/distill_volume.py --teacher f.safetensors --student hashgrid --schedule staged --active ""
    python scripts/distill_volume.py --teacher outputs/fields/tensorf --student splats   # into a 3D Gaussian scene

Writes outputs/distill/<teacher>_to_<student>/ (config, TensorBoard, checkpoints, renders,
student.safetensors, metrics.json; for splats renders/test_grid.png and scene.ply) and resumes from its
latest checkpoint when run again.
"""

from __future__ import annotations

import tyro

from scene3d.cli import run_cli
from scene3d.distill.volume.run import DistillVolumeConfig, distill_volume


def main(config: DistillVolumeConfig) -> None:
    _, metrics = distill_volume(config)
    line = f"{metrics['teacher']} -> {metrics['student']}: PSNR vs teacher {metrics['psnr_vs_teacher']:.2f} dB"
    if "test_psnr" in metrics:
        line += f", test PSNR {metrics['test_psnr']:.2f} dB (teacher {metrics['teacher_test_psnr']:.2f} dB)"
    print(f"{line} after {metrics['steps']} steps ({metrics['train_seconds']:.0f} s)")


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(DistillVolumeConfig)))
