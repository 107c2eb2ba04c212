"""The `make demo` stage of splat-and-distill: teacher, FiT3D-style and splat-and-distill students, the
3D-awareness probe table."""

from __future__ import annotations

from pathlib import Path

from lab.eval.awareness import compare_3d_awareness, demo_config


def run_stage(out_dir: Path, quick: bool) -> dict:
    """`make demo` stage: teacher, FiT3D-style and splat-and-distill students, the probe table."""
    out_dir = Path(out_dir)
    cfg = demo_config(out_dir, quick)
    out = compare_3d_awareness(cfg, out_dir / "splat_distill" / f"{cfg.run_name}_3d_awareness.json")
    return {"table": out["table"], "target_met": out["target_met"], "seconds": out["seconds"]["total"],
            "json": str(out_dir / "splat_distill" / f"{cfg.run_name}_3d_awareness.json")}
