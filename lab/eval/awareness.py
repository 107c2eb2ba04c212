"""The 3D-awareness comparison behind `scripts/eval_3d_awareness.py`: per seed, the teacher, the 2D-only
control, the splat-and-distill student, the FiT3D student and the oracle splat student (dataset depth,
label-guided upsampling) through the same Probe3D-style probes on held-out worlds; mean and std over the
seeds as JSON, a markdown table and one PNG."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from avfm.self_distillation import SelfDistillationConfig
from avfm.splat_distill import (
    SplatRunConfig,
    TeacherSpec,
    WorldsConfig,
    distill_worlds,
    make_teacher,
    probe_worlds,
    run_defaults,
    run_splat_distill,
    train_depth_predictor,
)
from scene3d.checkpoint import atomic_write_json
from scene3d.distill.splat.distiller import SplatDistillConfig
from scene3d.distill.splat.fit3d import Fit3DConfig, fit3d_densify
from scene3d.distill.splat.mvs import MVSConfig
from scene3d.distill.splat.probes import ProbeConfig, probe_3d_awareness
from scene3d.distill.splat.viz import save_feature_panel

TABLE_KEYS = ("recall@5px", "recall@10px", "recall@20px", "depth_rmse", "depth_delta1", "normal_mean_deg",
              "normal_within_11.25", "normal_within_22.5", "normal_within_30.0", "seg_miou")
LOWER_IS_BETTER = ("depth_rmse", "normal_mean_deg")
# row -> the distill options that make it (None: the teacher itself)
ROWS = {
    "teacher": None,
    "2d_control": {"target_source": "2d"},
    "splat_student": {"target_source": "splat"},
    "fit3d_student": {"target_source": "fit3d"},
    "oracle_splat_student": {"target_source": "splat", "depth_source": "oracle", "upsample": "oracle_labels"},
}
VERDICT_KEYS = {"correspondence": "recall@20px", "depth": "depth_rmse", "normals": "normal_mean_deg"}


def flat_row(probes: dict) -> dict[str, float]:
    corr = probes["correspondence"]
    return {k: (corr[k] if k.startswith("recall") else probes[k]) for k in TABLE_KEYS}


def summarise(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """row -> metric -> {mean, std} over seeds (std 0 for one seed)."""
    out = {}
    for row, runs in per_seed.items():
        out[row] = {}
        for k in TABLE_KEYS:
            values = [r[k] for r in runs]
            out[row][k] = {"mean": statistics.fmean(values),
                           "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def markdown_table(summary: dict) -> str:
    head = "| model | " + " | ".join(TABLE_KEYS) + " |\n|---|" + "---|" * len(TABLE_KEYS) + "\n"
    return head + "".join(f"| {name} | " + " | ".join(f"{r[k]['mean']:.3f} ± {r[k]['std']:.3f}" for k in TABLE_KEYS)
                          + " |\n" for name, r in summary.items())


def verdict(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, dict]:
    """Does the splat student beat the teacher and the 2D control by more than the seed spread? Paired per seed:
    the mean improvement and its std over seeds, for recall@20px, depth RMSE and normal error."""
    out = {}
    for other in ("teacher", "2d_control"):
        for name, key in VERDICT_KEYS.items():
            sign = -1.0 if key in LOWER_IS_BETTER else 1.0
            gains = [sign * (s[key] - o[key]) for s, o in zip(per_seed["splat_student"], per_seed[other], strict=True)]
            mean = statistics.fmean(gains)
            std = statistics.stdev(gains) if len(gains) > 1 else 0.0
            out[f"{name}_vs_{other}"] = {"gain_mean": mean, "gain_std": std, "met": mean > std and mean > 0}
    return out


def plot_summary(path: Path, summary: dict, seeds: list[int]) -> Path:
    """One panel per headline metric: the rows' means with their seed std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("recall@20px", "depth_rmse", "normal_mean_deg", "seg_miou")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    rows = list(summary)
    for ax, key in zip(axes, keys, strict=True):
        means = [summary[r][key]["mean"] for r in rows]
        stds = [summary[r][key]["std"] for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, capsize=3, color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), [r.replace("_", "\n") for r in rows], fontsize=7)
        lo, hi = min(m - s for m, s in zip(means, stds, strict=True)), max(m + s for m, s in zip(means, stds,
                                                                                           strict=True))
        pad = 0.15 * (hi - lo + 1e-9)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(key + (" (lower is better)" if key in LOWER_IS_BETTER else ""), fontsize=9)
    fig.suptitle(f"3D-awareness probes on held-out worlds, mean ± std over seeds {seeds}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def seed_config(cfg: SplatRunConfig, seed: int) -> SplatRunConfig:
    """The run of one seed: teacher, depth predictor, FiT3D fits and students all seeded with it."""
    return replace(cfg, teacher=replace(cfg.teacher, seed=seed), distill=replace(cfg.distill, seed=seed),
                   mvs=replace(cfg.mvs, seed=seed), fit3d=replace(cfg.fit3d, seed=seed),
                   run=replace(cfg.run, name=f"{cfg.run_name}_s{seed}"))


def compare_one_seed(cfg: SplatRunConfig, seed: int, log=print) -> tuple[dict[str, dict], dict]:
    """Every row's probes for one seed (rows: `ROWS`), and its timings and training losses."""
    t0 = time.time()
    cfg = seed_config(cfg, seed)
    root = Path(cfg.run.output_root) / "splat_distill"
    worlds = distill_worlds(cfg.worlds)
    teacher = make_teacher(cfg.teacher, worlds, root / f"{cfg.run_name}_teacher.safetensors", cfg.run.progress)
    probe_train, probe_test = probe_worlds(cfg.worlds)
    timings = {"teacher_ready": round(time.time() - t0, 1)}
    t = time.time()
    depth_fn = train_depth_predictor(cfg, worlds, cfg.run.open("splat_distill", f"{cfg.run_name}_depth"))
    timings["depth_predictor"] = round(time.time() - t, 1)
    results, students, losses = {"teacher": probe_3d_awareness(teacher, probe_train, probe_test, cfg.probe)}, {}, {}
    for row, options in ROWS.items():
        if options is None:
            continue
        t = time.time()
        run_cfg = replace(cfg, run=replace(cfg.run, name=f"{cfg.run_name}_{row}"), run_probes=False,
                          distill=replace(cfg.distill, **options))
        out = run_splat_distill(run_cfg, teacher=teacher, worlds=worlds, depth_fn=depth_fn)
        students[row] = out["student"]
        losses[row] = {m: out[m] for m in ("loss_first", "loss_last", "fit3d_final_mse") if m in out}
        results[row] = probe_3d_awareness(students[row], probe_train, probe_test, cfg.probe)
        timings[f"train_{row}"] = round(time.time() - t, 1)
        log(f"seed {seed} {row}: {json.dumps({k: round(v, 4) for k, v in flat_row(results[row]).items()})}")
    panel = save_feature_panel(root / f"{cfg.run_name}_features.png", probe_test[0].images[:6],
                               {"teacher": teacher, **students})
    timings["total"] = round(time.time() - t0, 1)
    return results, {"seconds": timings, "losses": losses, "features_png": str(panel)}


def compare_3d_awareness(cfg: SplatRunConfig, seeds: list[int], output: Path | None = None, log=print) -> dict:
    """Every row over `seeds`: mean, std, each seed's table, the paired verdict; JSON at `output` (and
    the PNG beside it)."""
    t0 = time.time()
    per_seed: dict[str, list[dict[str, float]]] = {row: [] for row in ROWS}
    details = {}
    for seed in seeds:
        results, info = compare_one_seed(cfg, seed, log)
        for row in ROWS:
            per_seed[row].append(flat_row(results[row]))
        details[str(seed)] = {"probes": results, **info}
    config = {"teacher": cfg.teacher.name, "distill_steps": cfg.distill.steps, "worlds": cfg.worlds.__dict__,
              "upsample": cfg.distill.upsample, "lora_rank": cfg.distill.lora_rank,
              "ema": [cfg.distill.ema_momentum, cfg.distill.ema_every]}
    return write_summary(list(seeds), per_seed, details, config, round(time.time() - t0, 1), output)


def write_summary(seeds: list[int], per_seed: dict, details: dict, config: dict, seconds: float,
                  output: Path | None) -> dict:
    summary = summarise(per_seed)
    out = {"seeds": seeds, "table": summary, "per_seed": per_seed, "markdown": markdown_table(summary),
           "target_met": verdict(per_seed), "details": details, "config": config, "seconds": seconds}
    if output is not None:
        out["png"] = str(plot_summary(Path(output).with_suffix(".png"), summary, seeds))
        atomic_write_json(output, out)
    return out


def combine(paths: list[Path], output: Path) -> dict:
    """One result from evaluations of disjoint seeds run apart (e.g. one process per seed); their configs
    must agree."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    if any(p["config"] != parts[0]["config"] for p in parts):
        raise ValueError(f"--combine: the files' configs differ ({', '.join(map(str, paths))})")
    seeds = [s for p in parts for s in p["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--combine: a seed appears twice across the files: {seeds}")
    per_seed = {row: [r for p in parts for r in p["per_seed"][row]] for row in ROWS}
    details = {k: v for p in parts for k, v in p["details"].items()}
    return write_summary(seeds, per_seed, details, parts[0]["config"], sum(p["seconds"] for p in parts), output)


def quick_config(output_root: Path = Path("outputs"), name: str = "quick") -> SplatRunConfig:
    """A few minutes a seed on 2 CPU cores: 4 distillation worlds, 120 steps per student."""
    return SplatRunConfig(
        worlds=WorldsConfig(n_distill=4, n_views=16, n_probe_train=3, n_probe_test=3, probe_views=10),
        teacher=TeacherSpec(self_supervised=SelfDistillationConfig(steps=150, batch_size=16)),
        distill=SplatDistillConfig(steps=120, warmup=10),
        mvs=MVSConfig(steps=150),
        fit3d=Fit3DConfig(n_points=3000, steps=120,
                          densify=replace(fit3d_densify(), refine_start=20, refine_stop=100, refine_every=20)),
        probe=ProbeConfig(pairs_per_world=20, seg_steps=200),
        run=run_defaults(name=name, output_root=output_root, checkpoint_every=60, progress=False))


def demo_config(out_dir: Path, quick: bool) -> SplatRunConfig:
    """The demo's setting: every row at a few minutes' scale (quick: a smoke run)."""
    if not quick:
        return SplatRunConfig(
            worlds=WorldsConfig(n_distill=3, n_views=12, n_probe_train=3, n_probe_test=3, probe_views=8),
            teacher=TeacherSpec(self_supervised=SelfDistillationConfig(steps=80, batch_size=16)),
            distill=SplatDistillConfig(steps=60, warmup=6),
            mvs=MVSConfig(steps=120),
            fit3d=Fit3DConfig(n_points=2000, steps=60,
                              densify=replace(fit3d_densify(), refine_start=10, refine_stop=50, refine_every=10)),
            probe=ProbeConfig(pairs_per_world=16, seg_steps=150),
            run=run_defaults(name="demo", output_root=out_dir, checkpoint_every=40, progress=False))
    return SplatRunConfig(
        worlds=WorldsConfig(n_distill=2, n_views=12, n_probe_train=2, n_probe_test=2, probe_views=6),
        teacher=TeacherSpec(self_supervised=SelfDistillationConfig(steps=20, batch_size=8)),
        distill=SplatDistillConfig(steps=15, batch_size=2, warmup=3),
        mvs=MVSConfig(steps=10),
        fit3d=Fit3DConfig(n_points=1500, steps=10,
                          densify=replace(fit3d_densify(), refine_start=2, refine_stop=9, refine_every=4)),
        probe=ProbeConfig(pairs_per_world=8, seg_steps=60, max_pixels=20000),
        run=run_defaults(name="demo_quick", output_root=out_dir, checkpoint_every=15, progress=False))
