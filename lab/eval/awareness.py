"""The 3D-awareness comparison behind `scripts/eval_3d_awareness.py`: teacher, FiT3D-style student and
splat-and-distill student through the same Probe3D-style probes on held-out worlds (JSON and a table)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from avfm.splat_distill import (
    SplatRunConfig,
    TeacherSpec,
    WorldsConfig,
    distill_worlds,
    make_teacher,
    probe_worlds,
    run_defaults,
    run_splat_distill,
)
from avfm.teachers import DenseTeacherConfig
from scene3d.checkpoint import atomic_write_json
from scene3d.distill.splat.distiller import SplatDistillConfig
from scene3d.distill.splat.fit3d import Fit3DConfig
from scene3d.distill.splat.probes import ProbeConfig, probe_3d_awareness
from scene3d.distill.splat.viz import save_feature_panel

TABLE_KEYS = ("recall@5px", "recall@10px", "recall@20px", "depth_rmse", "depth_delta1", "normal_mean_deg",
              "normal_within_11.25", "normal_within_22.5", "normal_within_30.0", "seg_miou")


def flat_row(probes: dict) -> dict[str, float]:
    corr = probes["correspondence"]
    return {k: (corr[k] if k.startswith("recall") else probes[k]) for k in TABLE_KEYS}


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    head = "| model | " + " | ".join(TABLE_KEYS) + " |\n|---|" + "---|" * len(TABLE_KEYS) + "\n"
    return head + "".join(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in TABLE_KEYS) + " |\n"
                          for name, r in rows.items())


def compare_3d_awareness(cfg: SplatRunConfig, output: Path | None = None) -> dict:
    """Teacher vs FiT3D-style student vs splat-and-distill student on the same held-out worlds."""
    t0 = time.time()
    root = Path(cfg.run.output_root) / "splat_distill"
    worlds = distill_worlds(cfg.worlds)
    teacher = make_teacher(cfg.teacher, worlds, root / f"{cfg.run_name}_teacher.safetensors", cfg.run.progress)
    probe_train, probe_test = probe_worlds(cfg.worlds)
    timings = {"teacher_ready": round(time.time() - t0, 1)}
    results: dict = {"teacher": probe_3d_awareness(teacher, probe_train, probe_test, cfg.probe)}
    runs = {}
    for source in ("fit3d", "splat"):
        run_cfg = replace(cfg, run=replace(cfg.run, name=f"{cfg.run_name}_{source}"), run_probes=False,
                          distill=replace(cfg.distill, target_source=source))
        t = time.time()
        runs[source] = run_splat_distill(run_cfg, teacher=teacher, worlds=worlds)
        timings[f"train_{source}"] = round(time.time() - t, 1)
        results[source] = probe_3d_awareness(runs[source]["student"], probe_train, probe_test, cfg.probe)
    encoders = {"teacher": teacher, "fit3d": runs["fit3d"]["student"], "splat": runs["splat"]["student"]}
    panel = save_feature_panel(root / f"{cfg.run_name}_features.png", probe_test[0].images[:6], encoders)
    rows = {"teacher": flat_row(results["teacher"]), "fit3d_student": flat_row(results["fit3d"]),
            "splat_student": flat_row(results["splat"])}
    t, s = rows["teacher"], rows["splat_student"]
    verdict = {"recall_better": all(s[k] > t[k] for k in ("recall@5px", "recall@10px", "recall@20px")),
               "depth_better": s["depth_rmse"] < t["depth_rmse"] and s["depth_delta1"] >= t["depth_delta1"],
               "miou_within_1pt": s["seg_miou"] >= t["seg_miou"] - 0.01}
    out = {"table": rows, "markdown": markdown_table(rows), "target_met": verdict, "details": results,
           "losses": {k: {m: v[m] for m in ("loss_first", "loss_last") if m in v} for k, v in runs.items()},
           "features_png": str(panel), "config": {"teacher": cfg.teacher.name, "distill_steps": cfg.distill.steps,
                      "worlds": cfg.worlds.__dict__}, "seconds": {**timings, "total": round(time.time() - t0, 1)}}
    if output is not None:
        atomic_write_json(output, out)
    return out


def quick_config(output_root: Path = Path("outputs"), name: str = "quick") -> SplatRunConfig:
    """A few minutes on 2 CPU cores: 4 distillation worlds, 120 steps per student."""
    return SplatRunConfig(
        worlds=WorldsConfig(n_distill=4, n_views=16, n_probe_train=3, n_probe_test=3, probe_views=10),
        teacher=TeacherSpec(supervised=DenseTeacherConfig(steps=200)),
        distill=SplatDistillConfig(steps=120, warmup=10),
        fit3d=Fit3DConfig(n_points=3000, steps=40),
        probe=ProbeConfig(pairs_per_world=20, seg_steps=200),
        run=run_defaults(name=name, output_root=output_root, checkpoint_every=60, progress=False))


def demo_config(out_dir: Path, quick: bool) -> SplatRunConfig:
    if not quick:  # the `eval_3d_awareness.py --quick` setting
        return quick_config(out_dir, "demo")
    return SplatRunConfig(
        worlds=WorldsConfig(n_distill=2, n_views=12, n_probe_train=2, n_probe_test=2, probe_views=6),
        teacher=TeacherSpec(supervised=DenseTeacherConfig(steps=60, batch_size=8)),
        distill=SplatDistillConfig(steps=15, batch_size=2, warmup=3),
        fit3d=Fit3DConfig(n_points=1500, steps=10),
        probe=ProbeConfig(pairs_per_world=8, seg_steps=60, max_pixels=20000),
        run=run_defaults(name="demo_quick", output_root=out_dir, checkpoint_every=15, progress=False))


