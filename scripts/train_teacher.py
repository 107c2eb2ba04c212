"""Train the small dense teacher on synthetic scenes' labels and save it for `--teacher.name trained`.

python scripts/train_teacher.py --out outputs/teachers/dense.safetensors
"""

from dataclasses import dataclass, field
from pathlib import Path

import tyro

from avfm.data import load_scenes
from avfm.teachers import DenseTeacherConfig, save_vit_teacher, train_dense_teacher
from scene3d.cli import run_cli


@dataclass
class Args:
    out: Path = Path("outputs/teachers/dense.safetensors")
    source: str = "synthetic"
    n: int = 256
    resolution: int = 64
    seed: int = 0
    teacher: DenseTeacherConfig = field(default_factory=DenseTeacherConfig)


def main() -> None:
    args = tyro.cli(Args)
    scenes = load_scenes(args.source, args.n, args.resolution, args.seed)
    teacher, losses = train_dense_teacher(
        scenes.images, scenes.labels, scenes.num_classes, scenes.scene_class, args.teacher, progress=True
    )
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; saved {save_vit_teacher(args.out, teacher)}")


if __name__ == "__main__":
    run_cli(main)
