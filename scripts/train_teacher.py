"""Train a small dense teacher on synthetic scenes in `outputs/teachers/<name>/` (checkpoints; resumes when
run again) and save it there as `teacher.safetensors` for `--teacher.path` of train_avfm.py. Default: the
self-supervised teacher (DINO + iBOT, no labels); `--kind supervised` trains on the dense labels.

python scripts/train_teacher.py   # -> outputs/teachers/self_supervised/teacher.safetensors
python scripts/train_avfm.py --teacher.path outputs/teachers/self_supervised/teacher.safetensors
python scripts/train_teacher.py --probe-scenes 128   # also: probe mIoU of the teacher and of its initialisation
"""

import tyro

from avfm.teacher_runs import TeacherRunConfig, probe_teacher, train_teacher_run
from scene3d.cli import run_cli


def main(config: TeacherRunConfig) -> None:
    trainer, result, saved = train_teacher_run(config)
    steps = getattr(config, config.kind).steps
    if saved is None:
        print(f"stopped after step {result.steps} of {steps}; run again to continue")
    else:
        print(f"loss {trainer.losses[0]:.3f} -> {trainer.losses[-1]:.3f} after {result.steps} steps; saved {saved}")
        if config.probe_scenes > 0:
            from avfm.teachers import load_vit_teacher

            probe = probe_teacher(config, load_vit_teacher(saved), saved.parent)
            print(f"probe mIoU: trained {probe['trained']['miou']:.3f}, untrained {probe['untrained']['miou']:.3f}")


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(TeacherRunConfig)))
