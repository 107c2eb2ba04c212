"""Side-by-side benchmark of volume distillation on the default synthetic world: for each
(teacher, student) pair, (a) the student fitted from scratch to the ground-truth images, (b) PVD
(staged schedule, no active learning) and (c) PVD-AL (all levels at once, camera + ray + point active
learning) from the same teacher, each for the same training wall time. Reports test PSNR against
wall time (PNG), the time each run needs to reach the from-scratch student's final PSNR, and PSNR at
equal wall time. Teachers are trained here first (their time is not counted, as in the papers,
which start from a trained teacher) or loaded from `teachers_dir/<name>` run directories."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

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

DISTILL_METHODS = {  # method: (schedule, with active learning)
    "pvd": ("staged", False),
    "pvd_al": ("all_at_once", True),
    "pvd_staged_al": ("staged", True),  # isolates active learning: PVD's schedule plus the active levels
}
METHODS = ("scratch", *DISTILL_METHODS)


@dataclass
class PVDBenchConfig:
    """quick: 32x32 images, batches of 256 rays x 32 samples, 50 s per teacher and 24 s per student
    run (< 10 min in all on 2 cores); otherwise 64x64, 1024 rays x 64 samples, 10 minutes per teacher
    and 5 minutes per student run.
    pairs: "teacher:student" names. student_preset: the student's size for both the from-scratch and
    the distilled runs ("paper": e.g. NeRF's 8 x 256 MLP, the papers' setting).
    methods: the runs made here among scratch, pvd (staged), pvd_al (all at once with the three
    active-learning levels) and pvd_staged_al (staged with them: active learning's own gain over pvd).
    stage_fractions: the staged schedule's boundaries (None: the distiller's default).
    al_levels: the active-learning levels of the pvd_al and pvd_staged_al runs.
    distill_seconds: the distilled runs' budget (None: student_seconds). A shorter one asks whether a
    whole distillation schedule of that length reaches the from-scratch run's final PSNR (the
    speed-up as the papers measure it: the same quality from a shorter run).
    reuse: earlier bench JSONs whose runs of the same pairs are taken as they are (e.g. runs made in
    parallel processes).
    teachers_dir: load `<dir>/<teacher>` (a field run directory fitted to the same world and image
    size, e.g. outputs/fields) instead of training the teacher here."""

    quick: bool = False
    pairs: tuple[str, ...] = ("hashgrid:mlp", "tensorf:grid", "grid:hashgrid")
    student_preset: str = "default"
    methods: Annotated[tuple[str, ...], Choice(METHODS)] = METHODS
    stage_fractions: Annotated[tuple[float, float] | None, Range(0, 1)] = None
    al_levels: str = "image,ray,point"
    reuse: tuple[Path, ...] = ()
    teacher_seconds: Annotated[float | None, Range(0, above=True)] = None
    student_seconds: Annotated[float | None, Range(0, above=True)] = None
    distill_seconds: Annotated[float | None, Range(0, above=True)] = None
    eval_every_seconds: Annotated[float | None, Range(0, above=True)] = None
    eval_views: Annotated[int, Range(1)] = 4
    batch_rays: Annotated[int | None, Range(1)] = None
    n_samples: Annotated[int | None, Range(1, 4096)] = None
    teachers_dir: Path | None = None
    out: Path = Path("outputs/bench/pvd.json")
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        check(self)

    def budget(self, which: str) -> float:
        given = {"teacher": self.teacher_seconds, "student": self.student_seconds,
                 "distill": self.distill_seconds or self.student_seconds, "eval": self.eval_every_seconds}[which]
        quick = {"teacher": 50.0, "student": 24.0, "distill": 24.0, "eval": 4.0}
        full = {"teacher": 600.0, "student": 300.0, "distill": 300.0, "eval": 30.0}
        return given or (quick if self.quick else full)[which]

    @property
    def batch(self) -> tuple[int, int]:
        """(rays per batch, samples per ray)."""
        return self.batch_rays or (256 if self.quick else 1024), self.n_samples or (32 if self.quick else 64)


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
    """Training seconds at the first evaluation with test PSNR >= psnr (None if never)."""
    return next((p["seconds"] for p in timeline if p["test_psnr"] >= psnr), None)


def psnr_at(timeline: list[dict[str, float]], seconds: float) -> float:
    """Test PSNR of the last evaluation at or before `seconds`."""
    return max((p for p in timeline if p["seconds"] <= seconds), key=lambda p: p["seconds"],
               default=timeline[0])["test_psnr"]


def fit_config(config: PVDBenchConfig, field: str, preset: str = "default") -> FitConfig:
    size = 32 if config.quick else 64
    return FitConfig(field=field, preset=preset, image_size=size, n_train_views=24 if config.quick else 40,
                     n_test_views=config.eval_views, batch_rays=config.batch[0], n_samples=config.batch[1],
                     steps=10**6, device=config.device, seed=config.seed)


def get_teacher(config: PVDBenchConfig, name: str, train: MultiViewDataset, test: MultiViewDataset
                ) -> tuple[Field, dict[str, Any]]:
    """A teacher loaded from `teachers_dir` or fitted here for `teacher_seconds`."""
    if config.teachers_dir is not None and RunDir(config.teachers_dir / name).latest_checkpoint() is not None:
        field, _ = load_teacher(config.teachers_dir / name)
        return field, {"source": str(config.teachers_dir / name)}
    torch.manual_seed(config.seed)
    trainer = FieldTrainer(fit_config(config, name), train, test)
    timeline = timed_run(Stepper(trainer), lambda n: setattr(trainer.config, "steps", n),
                         lambda: trainer.evaluate()[0]["test_psnr"], config.budget("teacher"),
                         config.budget("teacher"))
    return trainer.field.eval(), {"source": "trained here", "train_seconds": timeline[-1]["seconds"],
                                  "steps": timeline[-1]["steps"]}


def run_method(config: PVDBenchConfig, method: str, teacher: Field, student: str, train: MultiViewDataset,
               test: MultiViewDataset) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    budget, every = config.budget("student" if method == "scratch" else "distill"), config.budget("eval")
    if method == "scratch":
        trainer = FieldTrainer(fit_config(config, student, config.student_preset), train, test)
        timeline = timed_run(Stepper(trainer), lambda n: setattr(trainer.config, "steps", n),
                             lambda: trainer.evaluate()[0]["test_psnr"], budget, every)
        return {"timeline": timeline, "budget_seconds": budget, "params": trainer.field.parameter_count()}
    schedule, with_al = DISTILL_METHODS[method]
    active = config.al_levels if with_al else ""
    stages = {} if config.stage_fractions is None else {"stage_fractions": tuple(config.stage_fractions)}
    distill = VolumeDistillConfig(student=student, preset=config.student_preset, batch_rays=config.batch[0],
                                  n_samples=config.batch[1], schedule=schedule, active=active,
                                  device=config.device, seed=config.seed, steps=10**6, **stages)
    views = EvalViews(test.cameras, test.background.float(), ground_truth=test.images)
    distiller = VolumeDistiller(distill, teacher, Shell.from_cameras(train.cameras), views)
    timeline = timed_run(Stepper(distiller), lambda n: setattr(distiller.config, "steps", n),
                         lambda: distiller.evaluate()[0]["test_psnr"], budget, every)
    final, _ = distiller.evaluate()
    return {"timeline": timeline, "budget_seconds": budget, "schedule": schedule, "active": active,
            "params": distiller.student.parameter_count(),
            "psnr_vs_teacher": round(final["psnr_vs_teacher"], 3),
            "teacher_test_psnr": round(final["teacher_test_psnr"], 3)}


def summarize(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Time to the from-scratch final PSNR, its speed-up, PSNR at equal time, and (given a pvd run)
    each method's final gain over plain PVD (for the pvd_*al runs: active learning's gain)."""
    target = runs["scratch"]["timeline"][-1]["test_psnr"]
    scratch_time = seconds_to_reach(runs["scratch"]["timeline"], target)
    out = {"scratch_final_psnr": target}
    for method, run in runs.items():
        reach = seconds_to_reach(run["timeline"], target)
        end = run["timeline"][-1]["seconds"]
        out[method] = {"final_psnr": run["timeline"][-1]["test_psnr"], "seconds_to_scratch_final": reach,
                       "speedup_to_scratch_final": round(scratch_time / reach, 2) if reach else None,
                       "psnr_at_half_time": psnr_at(run["timeline"], end / 2),
                       "gain_over_scratch_db": round(run["timeline"][-1]["test_psnr"] - target, 3)}
        if "pvd" in runs and method != "pvd":
            out[method]["gain_over_pvd_db"] = round(
                run["timeline"][-1]["test_psnr"] - runs["pvd"]["timeline"][-1]["test_psnr"], 3)
    return out


def plot(results: dict[str, Any], path: Path) -> Path:
    """Test PSNR against training wall time, one panel per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = results["pairs"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4), squeeze=False)
    for ax, (pair, res) in zip(axes[0], pairs.items(), strict=True):
        for method, run in res["runs"].items():
            tl = run["timeline"]
            label = f"{method} ({run['active']})" if run.get("active") else method
            ax.plot([p["seconds"] for p in tl], [p["test_psnr"] for p in tl], marker=".", label=label)
        if "test_psnr" in res["teacher"]:
            ax.axhline(res["teacher"]["test_psnr"], color="gray", linestyle="--", label="teacher")
        ax.set(title=pair.replace(":", " -> "), xlabel="training CPU time (s)", ylabel="test PSNR (dB)")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_bench(config: PVDBenchConfig) -> dict[str, Any]:
    unknown = sorted(set(config.methods) - set(METHODS))
    if unknown:
        raise KeyError(f"methods: unknown {unknown}; choose among {list(METHODS)}")
    train, test = load_data(fit_config(config, "mlp"))
    results = {"quick": config.quick, "image_size": train.width, "batch_rays": config.batch[0],
               "n_samples": config.batch[1], "teacher_seconds": config.budget("teacher"),
               "student_seconds": config.budget("student"), "distill_seconds": config.budget("distill"),
               "student_preset": config.student_preset,
               "clock": "process_time (CPU s of one thread)", "threads": torch.get_num_threads(),
               "device": config.device, "pairs": {}}
    previous: dict[str, Any] = {}
    for path in config.reuse:
        for pair, res in json.loads(Path(path).read_text())["pairs"].items():
            entry = previous.setdefault(pair, {"teacher": {}, "runs": {}})
            entry["teacher"] |= res["teacher"]
            entry["runs"] |= res["runs"]
    for pair in config.pairs:
        teacher_name, student = pair.split(":")
        for name in (teacher_name, student):
            if name not in FIELDS:
                raise KeyError(f"unknown field '{name}' in pair '{pair}'; registered: {sorted(FIELDS)}")
        runs = dict(previous.get(pair, {}).get("runs", {}))
        todo = [m for m in config.methods if m not in runs]
        teacher, info = None, dict(previous.get(pair, {}).get("teacher", {}))
        if any(m != "scratch" for m in todo):
            teacher, info = get_teacher(config, teacher_name, train, test)
        runs |= {m: run_method(config, m, teacher, student, train, test) for m in todo}
        runs = {m: runs[m] for m in METHODS if m in runs}
        distilled = [r for m, r in runs.items() if m != "scratch"]
        if distilled:
            info["test_psnr"] = distilled[0]["teacher_test_psnr"]
        results["pairs"][pair] = {"teacher": info, "runs": runs}
        if "scratch" in runs and len(runs) > 1:
            results["pairs"][pair]["summary"] = s = summarize(runs)
            print(f"{teacher_name} -> {student}: teacher {info['test_psnr']:.2f} dB; scratch final "
                  f"{s['scratch_final_psnr']:.2f} dB", flush=True)
            for m in runs:
                print(f"   {m:13s} final {s[m]['final_psnr']:6.2f} dB ({s[m]['gain_over_scratch_db']:+.2f}), "
                      f"reaches scratch final at {s[m]['seconds_to_scratch_final']} s "
                      f"(x{s[m]['speedup_to_scratch_final']})", flush=True)
        atomic_write_json(config.out, results)
    results["plot"] = str(plot(results, config.out.with_suffix(".png")))
    atomic_write_json(config.out, results)
    return results
