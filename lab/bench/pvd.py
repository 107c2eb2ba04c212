"""Side-by-side benchmark of volume distillation on the default synthetic world, over seeds: for each
(teacher, student) pair, (a) the student fitted from scratch to the ground-truth images, (b) PVD (staged
schedule, no active learning) and (c) PVD-AL (all levels at once with the image, ray and point levels),
each for the same CPU time, every field with PVD's shared head (`fields.shared_head`) and the student
starting from its teacher's decoders. Ablations: `pvd_al_no_inherit` (decoders from scratch),
`pvd_al_adapter` (each architecture's own decoders, linked by a learned linear map: the previous
method). Reports test PSNR against CPU time (PNG, mean and spread over seeds), the time each run needs
to reach the same seed's from-scratch final PSNR, and PSNR at equal time. Teachers are trained here
once per pair (their time is not counted, as in the papers, which start from a trained teacher) or
loaded from `teachers_dir/<name>` run directories."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from scene3d.checkpoint import atomic_write_json
from scene3d.config import Choice, Range, check
from scene3d.data.dataset import MultiViewDataset
from scene3d.distill.volume.active import Shell
from scene3d.distill.volume.distiller import EvalViews, VolumeDistillConfig, VolumeDistiller
from scene3d.distill.volume.run import load_teacher
from scene3d.fields.base import FIELDS, Field
from scene3d.fields.train import FieldTrainer, FitConfig, load_data
from scene3d.runs import RunDir
from scene3d.train import Stepper

DISTILL_METHODS: dict[str, dict[str, Any]] = {  # method: distillation overrides
    "pvd": {"schedule": "staged", "active": ""},
    "pvd_al": {"schedule": "all_at_once"},
    "pvd_al_no_inherit": {"schedule": "all_at_once", "inherit": False},
    "pvd_al_adapter": {"schedule": "all_at_once", "feature_level": "adapter"},
}
METHODS = ("scratch", *DISTILL_METHODS)
METRICS = ("final_psnr", "seconds_to_scratch_final", "speedup_to_scratch_final", "psnr_at_scratch_time",
           "gain_over_scratch_db")


@dataclass
class PVDBenchConfig:
    """quick: 32x32 images, batches of 256 rays x 32 samples, 50 s per teacher and 24 s per student
    run (a few minutes on 2 cores); otherwise 32x32 images, 256 x 32 rays, 300 s per teacher and 120 s
    per student run, over seeds 0 1 2 (students and distillations; one teacher per pair, seed 0).
    pairs: "teacher:student" names. student_preset: the student's size for both the from-scratch and
    the distilled runs ("paper": e.g. NeRF's 8 x 256 MLP, the papers' setting).
    methods: among scratch, pvd, pvd_al and the ablations pvd_al_no_inherit, pvd_al_adapter.
    stage_fractions: the staged schedule's boundaries (None: the distiller's default).
    al_levels: the active-learning levels of the pvd_al runs.
    reuse: earlier bench JSONs whose runs of the same pairs and seeds are taken as they are (e.g. runs
    made in parallel processes).
    teachers_dir: load `<dir>/<teacher>` (a field run directory fitted with `--head pvd` to the same world
    and image size) instead of training the teacher here."""

    quick: bool = False
    pairs: tuple[str, ...] = ("hashgrid:mlp", "tensorf:grid", "grid:hashgrid")
    student_preset: str = "default"
    methods: Annotated[tuple[str, ...], Choice(METHODS)] = ("scratch", "pvd", "pvd_al")
    seeds: tuple[int, ...] = (0, 1, 2)
    stage_fractions: Annotated[tuple[float, float] | None, Range(0, 1)] = None
    al_levels: str = "image,ray,point"
    reuse: tuple[Path, ...] = ()
    teacher_seconds: Annotated[float | None, Range(0, above=True)] = None
    student_seconds: Annotated[float | None, Range(0, above=True)] = None
    eval_every_seconds: Annotated[float | None, Range(0, above=True)] = None
    eval_views: Annotated[int, Range(1)] = 16
    image_size: Annotated[int, Range(8, 512)] = 32
    batch_rays: Annotated[int | None, Range(1)] = None
    n_samples: Annotated[int | None, Range(1, 4096)] = None
    teachers_dir: Path | None = None
    out: Path = Path("outputs/bench/pvd.json")
    device: str = "auto"

    def __post_init__(self) -> None:
        check(self)

    def budget(self, which: str) -> float:
        given = {"teacher": self.teacher_seconds, "student": self.student_seconds,
                 "eval": self.eval_every_seconds}[which]
        quick = {"teacher": 50.0, "student": 24.0, "eval": 4.0}
        full = {"teacher": 300.0, "student": 120.0, "eval": 15.0}
        return given or (quick if self.quick else full)[which]

    @property
    def batch(self) -> tuple[int, int]:
        """(rays per batch, samples per ray)."""
        return self.batch_rays or 256, self.n_samples or 32


def timed_run(step: Callable[[], Any], set_total_steps: Callable[[int], None], evaluate: Callable[[], float],
              budget: float, eval_every: float) -> list[dict[str, float]]:
    """Train for `budget` CPU seconds of step time (`time.process_time`: a one-thread process on a
    shared machine; evaluations not counted). After 10 steps the total step count that fits the
    budget is estimated and handed to the schedule (learning-rate decay, stages). Returns the
    timeline [{seconds, wall_seconds, steps, test_psnr}], ending with the final evaluation."""
    seconds, wall, steps, timeline, next_eval = 0.0, 0.0, 0, [], 0.0

    def record() -> None:
        timeline.append({"seconds": round(seconds, 2), "wall_seconds": round(wall, 2), "steps": steps,
                         "test_psnr": round(evaluate(), 3)})

    while seconds < budget:
        start, start_wall = time.process_time(), time.perf_counter()
        step()
        seconds += time.process_time() - start
        wall += time.perf_counter() - start_wall
        steps += 1
        if steps == 10:
            set_total_steps(max(11, int(budget / (seconds / steps))))
        if seconds >= next_eval:
            record()
            next_eval += eval_every
    record()
    return timeline


def seconds_to_reach(timeline: list[dict[str, float]], psnr: float) -> float | None:
    """Training seconds at which test PSNR first reaches psnr, interpolated linearly between the
    evaluation before and the first one at or above it (None if never). PSNR curves are concave, so
    the interpolation places the crossing late: a speed-up from it errs low."""
    for before, at in zip([None, *timeline[:-1]], timeline, strict=True):
        if at["test_psnr"] >= psnr:
            if before is None or at["test_psnr"] == before["test_psnr"]:
                return at["seconds"]
            share = (psnr - before["test_psnr"]) / (at["test_psnr"] - before["test_psnr"])
            return round(before["seconds"] + share * (at["seconds"] - before["seconds"]), 2)
    return None


def psnr_at(timeline: list[dict[str, float]], seconds: float) -> float:
    """Test PSNR of the last evaluation at or before `seconds`."""
    return max((p for p in timeline if p["seconds"] <= seconds), key=lambda p: p["seconds"],
               default=timeline[0])["test_psnr"]


def fit_config(config: PVDBenchConfig, field: str, seed: int, preset: str = "default") -> FitConfig:
    return FitConfig(field=field, preset=preset, head="pvd", image_size=config.image_size,
                     n_train_views=24 if config.quick else 40, n_test_views=config.eval_views,
                     batch_rays=config.batch[0], n_samples=config.batch[1], steps=10**6, device=config.device,
                     seed=seed)


def get_teacher(config: PVDBenchConfig, name: str, train: MultiViewDataset, test: MultiViewDataset
                ) -> tuple[Field, dict[str, Any]]:
    """A teacher loaded from `teachers_dir` or fitted here (seed 0) for `teacher_seconds`."""
    if config.teachers_dir is not None and RunDir(config.teachers_dir / name).latest_checkpoint() is not None:
        field, _ = load_teacher(config.teachers_dir / name)
        return field, {"source": str(config.teachers_dir / name), "head": field.config.head}
    torch.manual_seed(0)
    trainer = FieldTrainer(fit_config(config, name, seed=0), train, test)
    timeline = timed_run(Stepper(trainer), lambda n: setattr(trainer.config, "steps", n),
                         lambda: trainer.evaluate()[0]["test_psnr"], config.budget("teacher"),
                         config.budget("teacher"))
    return trainer.field.eval(), {"source": "trained here", "head": "pvd", "seed": 0,
                                  "train_seconds": timeline[-1]["seconds"], "steps": timeline[-1]["steps"]}


def run_method(config: PVDBenchConfig, method: str, seed: int, teacher: Field | None, student: str,
               train: MultiViewDataset, test: MultiViewDataset) -> dict[str, Any]:
    """One run of `method` with `seed` for the student budget; its timeline of test PSNR."""
    torch.manual_seed(seed)
    budget, every = config.budget("student"), config.budget("eval")
    if method == "scratch":
        trainer = FieldTrainer(fit_config(config, student, seed, config.student_preset), train, test)
        timeline = timed_run(Stepper(trainer), lambda n: setattr(trainer.config, "steps", n),
                             lambda: trainer.evaluate()[0]["test_psnr"], budget, every)
        return {"timeline": timeline, "budget_seconds": budget, "params": trainer.field.parameter_count()}
    overrides = {"active": config.al_levels, **DISTILL_METHODS[method]}
    if config.stage_fractions is not None:
        overrides["stage_fractions"] = tuple(config.stage_fractions)
    distill = VolumeDistillConfig(student=student, preset=config.student_preset, batch_rays=config.batch[0],
                                  n_samples=config.batch[1], device=config.device, seed=seed, steps=10**6,
                                  **overrides)
    views = EvalViews(test.cameras, test.background.float(), ground_truth=test.images)
    distiller = VolumeDistiller(distill, teacher, Shell.from_cameras(train.cameras), views)

    def set_total_steps(n: int) -> None:  # the schedule and the ray pool's capacity follow the run length
        distiller.config.steps = n
        distiller.ray_pool.capacity = distiller.config.ray_pool_capacity()

    timeline = timed_run(Stepper(distiller), set_total_steps, lambda: distiller.evaluate()[0]["test_psnr"],
                         budget, every)
    final, _ = distiller.evaluate()
    return {"timeline": timeline, "budget_seconds": budget, "schedule": distill.schedule, "active": distill.active,
            "params": distiller.student.parameter_count(), "inherited_tensors": len(distiller.inherited),
            "feature_level": distill.feature_level if distiller.has_feature_level() else "none",
            "psnr_vs_teacher": round(final["psnr_vs_teacher"], 3),
            "teacher_test_psnr": round(final["teacher_test_psnr"], 3)}


def summarize_seed(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """One seed: each method's final PSNR, the CPU seconds it takes to reach the from-scratch run's
    final PSNR and the speed-up over the from-scratch run's own time to it, its PSNR when the
    from-scratch run first reached that value, and its final gain over the from-scratch run."""
    target = runs["scratch"]["timeline"][-1]["test_psnr"]
    scratch_time = seconds_to_reach(runs["scratch"]["timeline"], target)
    out = {}
    for method, run in runs.items():
        reach = seconds_to_reach(run["timeline"], target)
        final = run["timeline"][-1]["test_psnr"]
        out[method] = {"final_psnr": final, "seconds_to_scratch_final": reach,
                       "speedup_to_scratch_final": round(scratch_time / reach, 2) if reach else None,
                       "psnr_at_scratch_time": psnr_at(run["timeline"], scratch_time),
                       "gain_over_scratch_db": round(final - target, 3)}
    return out


def mean_std(values: list[float | None]) -> dict[str, Any]:
    """Mean and (population) std over seeds; None when a seed has no value (e.g. never reached)."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "per_seed": values}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {"mean": round(mean, 3), "std": round(std, 3), "per_seed": values}


def summarize(per_seed: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per method and metric, mean / std / per_seed over the seeds (`summarize_seed` of each)."""
    seeds = sorted(per_seed)
    by_seed = {seed: summarize_seed(per_seed[seed]) for seed in seeds}
    methods = list(by_seed[seeds[0]])
    return {"seeds": seeds, **{m: {k: mean_std([by_seed[s][m][k] for s in seeds]) for k in METRICS}
                                for m in methods}}


def mean_curve(timelines: list[list[dict[str, float]]], points: int = 60
               ) -> tuple[list[float], list[float], list[float]]:
    """(seconds, mean PSNR, std PSNR) of timelines interpolated on a common grid up to the shortest one."""
    end = min(tl[-1]["seconds"] for tl in timelines)
    grid = np.linspace(0.0, end, points)
    curves = np.stack([np.interp(grid, [p["seconds"] for p in tl], [p["test_psnr"] for p in tl]) for tl in timelines])
    return grid.tolist(), curves.mean(0).tolist(), curves.std(0).tolist()


def plot(results: dict[str, Any], path: Path) -> Path:
    """Test PSNR against training CPU time, one panel per pair: each method's mean over seeds with a
    +-std band, and the teacher's test PSNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = results["pairs"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.2), squeeze=False)
    for ax, (pair, res) in zip(axes[0], pairs.items(), strict=True):
        seeds = sorted(res["runs"], key=int)
        for method in METHODS:
            timelines = [res["runs"][s][method]["timeline"] for s in seeds if method in res["runs"][s]]
            if not timelines:
                continue
            x, mean, std = mean_curve(timelines)
            line, = ax.plot(x, mean, label=f"{method} (n={len(timelines)})")
            ax.fill_between(x, [m - d for m, d in zip(mean, std, strict=True)],
                            [m + d for m, d in zip(mean, std, strict=True)], color=line.get_color(), alpha=0.2)
        if "test_psnr" in res["teacher"]:
            ax.axhline(res["teacher"]["test_psnr"], color="gray", linestyle="--", label="teacher")
        ax.set(title=pair.replace(":", " -> "), xlabel="training CPU time (s)", ylabel="test PSNR (dB)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_bench(config: PVDBenchConfig) -> dict[str, Any]:
    """Every pair, seed and method (runs found in `reuse` files are kept); writes the JSON after each
    pair and the plot at the end."""
    train, test = load_data(fit_config(config, "mlp", seed=0))
    results = {"quick": config.quick, "image_size": train.width, "test_views": len(test.cameras),
               "batch_rays": config.batch[0], "n_samples": config.batch[1],
               "teacher_seconds": config.budget("teacher"), "student_seconds": config.budget("student"),
               "student_preset": config.student_preset, "seeds": list(config.seeds),
               "clock": "process_time (CPU s of one thread)", "threads": torch.get_num_threads(),
               "device": config.device, "pairs": {}}
    previous: dict[str, Any] = {}
    for path in config.reuse:
        for pair, res in json.loads(Path(path).read_text())["pairs"].items():
            entry = previous.setdefault(pair, {"teacher": {}, "runs": {}})
            entry["teacher"] |= res["teacher"]
            for seed, runs in res["runs"].items():
                entry["runs"].setdefault(seed, {}).update(runs)
    for pair in config.pairs:
        teacher_name, student = pair.split(":")
        for name in (teacher_name, student):
            if name not in FIELDS:
                raise KeyError(f"unknown field '{name}' in pair '{pair}'; registered: {sorted(FIELDS)}")
        runs = {str(seed): dict(previous.get(pair, {}).get("runs", {}).get(str(seed), {})) for seed in config.seeds}
        teacher, info = None, dict(previous.get(pair, {}).get("teacher", {}))
        for seed in config.seeds:
            todo = [m for m in config.methods if m not in runs[str(seed)]]
            if teacher is None and any(m != "scratch" for m in todo):
                teacher, info = get_teacher(config, teacher_name, train, test)
            for method in todo:
                start = time.perf_counter()
                runs[str(seed)][method] = run_method(config, method, seed, teacher, student, train, test)
                final = runs[str(seed)][method]["timeline"][-1]["test_psnr"]
                print(f"{pair} seed {seed} {method}: final {final:.2f} dB ({time.perf_counter() - start:.0f} s)",
                      flush=True)
        runs = {seed: {m: r[m] for m in METHODS if m in r} for seed, r in runs.items()}
        distilled = [r for seed_runs in runs.values() for m, r in seed_runs.items() if m != "scratch"]
        if distilled:
            info["test_psnr"] = distilled[0]["teacher_test_psnr"]
        results["pairs"][pair] = {"teacher": info, "runs": runs}
        if all("scratch" in r and len(r) > 1 for r in runs.values()):
            results["pairs"][pair]["summary"] = summary = summarize({int(k): v for k, v in runs.items()})
            print(f"{teacher_name} -> {student}: teacher {info.get('test_psnr', float('nan')):.2f} dB", flush=True)
            for m in summary:
                if m == "seeds":
                    continue
                f, sp = summary[m]["final_psnr"], summary[m]["speedup_to_scratch_final"]
                print(f"   {m:18s} final {f['mean']:6.2f} ± {f['std']:.2f} dB, speed-up to scratch final "
                      f"{sp['per_seed']}", flush=True)
        atomic_write_json(config.out, results)
    results["plot"] = str(plot(results, config.out.with_suffix(".png")))
    atomic_write_json(config.out, results)
    return results
