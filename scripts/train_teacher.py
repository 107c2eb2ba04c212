"""Train the small dense teacher on synthetic scenes' labels in `outputs/teachers/<name>/` (checkpoints;
resumes when run again) and save it there as `teacher.safetensors` for `--teacher.path` of train_avfm.py.

python scripts/train_teacher.py --name dense   # -> outputs/teachers/dense/teacher.safetensors
python scripts/train_avfm.py --teacher.path outputs/teachers/dense/teacher.safetensors
"""

import tyro

from avfm.teachers import TeacherRunConfig, train_teacher_run
from scene3d.cli import run_cli


def main(config: TeacherRunConfig) -> None:
    trainer, result, saved = train_teacher_run(config)
    if saved is None:
        print(f"stopped after step {result.steps} of {config.teacher.steps}; run again to continue")
    else:
        print(f"loss {trainer.losses[0]:.3f} -> {trainer.losses[-1]:.3f} after {result.steps} steps; saved {saved}")


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(TeacherRunConfig)))
