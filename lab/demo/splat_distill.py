"""The `make demo` stage of splat-and-distill: teacher, 2D-only control, splat-and-distill, FiT3D and oracle
students through the 3D-awareness probes (one seed; `scripts/eval_3d_awareness.py` runs three). The teacher
is the avfm stage's self-supervised one (trained without labels) when that stage has run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lab.eval.awareness import compare_3d_awareness, demo_config


def run_stage(out_dir: Path, quick: bool) -> dict:
    """`make demo` stage: every row of the 3D-awareness table for seed 0, its JSON and PNG."""
    out_dir = Path(out_dir)
    cfg = demo_config(out_dir, quick)
    avfm_teacher = out_dir / "avfm" / ("demo_quick" if quick else "demo") / "teacher.safetensors"
    if avfm_teacher.is_file():
        cfg = replace(cfg, teacher=replace(cfg.teacher, path=avfm_teacher))
    path = out_dir / "splat_distill" / f"{cfg.run_name}_3d_awareness.json"
    out = compare_3d_awareness(cfg, [0], path)
    return {"table": {row: {k: v["mean"] for k, v in metrics.items()} for row, metrics in out["table"].items()},
            "target_met": out["target_met"], "seconds": out["seconds"], "json": str(path), "png": out["png"],
            "teacher": str(cfg.teacher.path) if cfg.teacher.path else "trained in the stage"}
