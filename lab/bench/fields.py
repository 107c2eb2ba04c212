"""Side-by-side benchmark of the four field architectures on the default synthetic world: query
throughput, training rays/s, time to 25 / 28 dB test PSNR, final PSNR / SSIM, parameters, memory,
and rendering with the occupancy grid against the non-skipping reference at equal image.

Times are this process's CPU seconds (`time.process_time`), with wall seconds beside them: on a
shared machine the CPU time is what the work costs, and with one torch thread it is the wall time
the same work takes on an idle core (with more threads it counts every thread, so it only
overstates)."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch

from scene3d.checkpoint import atomic_write_json
from scene3d.config import Choice, Range, check
from scene3d.fields.base import FIELDS
from scene3d.fields.train import FieldTrainer, FitConfig, load_data, mean_over_views
from scene3d.metrics import psnr
from scene3d.render import render_image, render_occupancy
from scene3d.timing import time_calls
from scene3d.train import Stepper


@dataclass
class BenchConfig:
    """quick: 32x32 images and 30 s of training per architecture (< 5 min in all); otherwise 64x64
    and the 10 minutes per architecture of the targets."""

    quick: bool = False
    fields: Annotated[tuple[str, ...], Choice(FIELDS)] = ("mlp", "tensorf", "grid", "hashgrid")
    seconds_per_field: Annotated[float | None, Range(0, above=True)] = None
    eval_every: Annotated[int, Range(1)] = 100
    out: Path = Path("outputs/bench/fields.json")
    device: str = "auto"

    def __post_init__(self) -> None:
        check(self)

    @property
    def budget(self) -> float:
        return self.seconds_per_field or (30.0 if self.quick else 600.0)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def steps_in_budget(steps_done: int, seconds: float, budget: float) -> int:
    """The run's total step count estimated from its pace so far, handed to the learning-rate decay
    after every step, so that the decay spans the time budget as it spans `steps` in `fit_field.py`
    (the decay factor is the architecture's lr_final_ratio ** (seconds / budget))."""
    return max(steps_done + 1, round(steps_done * budget / max(seconds, 1e-9)))


def bench_field(name: str, fit: FitConfig, train, test, budget: float, eval_every: int) -> dict[str, Any]:
    torch.manual_seed(fit.seed)
    trainer = FieldTrainer(fit, train, test)
    step, field = Stepper(trainer), trainer.field
    points = field.aabb[0] + torch.rand(65536, 3, device=trainer.device) * (field.aabb[1] - field.aabb[0])
    dirs = torch.nn.functional.normalize(torch.randn_like(points), dim=-1)
    with torch.no_grad():
        query_s = time_calls(lambda: field.query(points, dirs), warmup=0)[0].cpu_s
    train_seconds, wall_seconds, timeline, reached = 0.0, 0.0, [], {}
    while train_seconds < budget:
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        step()
        train_seconds += time.process_time() - start_cpu
        wall_seconds += time.perf_counter() - start_wall
        trainer.config.steps = steps_in_budget(step.step, train_seconds, budget)
        if step.step % eval_every == 0:
            metrics, _ = trainer.evaluate(4)
            timeline.append({"step": step.step, "seconds": round(train_seconds, 2),
                             "wall_seconds": round(wall_seconds, 2), "test_psnr": round(metrics["test_psnr"], 3)})
            for target in (25.0, 28.0):
                if metrics["test_psnr"] >= target and f"seconds_to_{target:.0f}db" not in reached:
                    reached[f"seconds_to_{target:.0f}db"] = round(train_seconds, 1)
    final, _ = trainer.evaluate()
    state_numel = sum(p.numel() for p in field.parameters()) + sum(
        t.numel() for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    return {
        "field": name, "params": field.parameter_count(), "steps": step.step,
        "train_seconds": round(train_seconds, 1), "train_wall_seconds": round(wall_seconds, 1),
        "queries_per_second": round(len(points) / query_s),
        "train_rays_per_second": round(fit.batch_rays * step.step / train_seconds),
        "seconds_to_25db": reached.get("seconds_to_25db"), "seconds_to_28db": reached.get("seconds_to_28db"),
        "final_test_psnr": round(final["test_psnr"], 3), "final_test_ssim": round(final["test_ssim"], 4),
        "state_mb": round(state_numel * 4 / 2**20, 1), "peak_rss_mb": round(_peak_rss_mb()),
        "occupied_fraction": trainer.occupancy.occupied_fraction if trainer.occupancy is not None else None,
        "occupancy_render": occupancy_versus_reference(trainer, test),
        "timeline": timeline,
    }


def occupancy_versus_reference(trainer: FieldTrainer, test) -> dict[str, Any] | None:
    """Render the test views without skipping (the reference), with the training run's occupancy
    grid, and with a render grid measured on the converged field: seconds, speed-up, test PSNR and
    PSNR against the reference image."""
    if trainer.occupancy is None:
        return None
    field, cams = trainer.field.eval(), test.cameras.to(trainer.device)
    kwargs = {"n_samples": trainer.config.n_samples, "background": trainer.background}
    target = test.images.float()
    ref_time, ref = time_calls(lambda: render_image(field, cams, **kwargs)["rgb"].clamp(0, 1).cpu(), repeats=2,
                               warmup=0)
    ref_s, ref_wall = ref_time.cpu_s, ref_time.wall_s
    start = time.process_time()
    render_grid = render_occupancy(field.density, field.aabb, trainer.config.n_samples)
    measure_s = time.process_time() - start
    result: dict[str, Any] = {"reference_seconds": round(ref_s, 2), "reference_wall_seconds": round(ref_wall, 2),
                              "psnr_reference": round(mean_over_views(psnr, ref, target), 3)}
    for name, grid in (("training_grid", trainer.occupancy), ("render_grid", render_grid)):
        occ_time, occ = time_calls(
            lambda grid=grid: render_image(field, cams, occupancy=grid, **kwargs)["rgb"].clamp(0, 1).cpu(), repeats=2,
            warmup=0)
        occ_s, occ_wall = occ_time.cpu_s, occ_time.wall_s
        result[name] = {"resolution": grid.config.resolution, "occupied_fraction": round(grid.occupied_fraction, 4),
                        "seconds": round(occ_s, 2), "wall_seconds": round(occ_wall, 2),
                        "speedup": round(ref_s / occ_s, 2), "wall_speedup": round(ref_wall / occ_wall, 2),
                        "psnr": round(mean_over_views(psnr, occ, target), 3),
                        "psnr_against_reference": round(mean_over_views(psnr, occ, ref), 2)}
    result["render_grid"]["measure_seconds"] = round(measure_s, 2)
    return result


def run_bench(config: BenchConfig) -> dict[str, Any]:
    size = 32 if config.quick else 64
    base = FitConfig(image_size=size, n_train_views=24 if config.quick else 40, n_test_views=4 if config.quick else 8,
                     device=config.device, steps=10**6, batch_rays=1024, n_samples=64)
    train, test = load_data(base)
    results = {"quick": config.quick, "image_size": size, "seconds_per_field": config.budget,
               "threads": torch.get_num_threads(), "device": config.device, "fields": {}}
    for name in config.fields:
        if name not in FIELDS:
            raise KeyError(f"unknown field '{name}'; registered: {sorted(FIELDS)}")
        fit = FitConfig(**{**base.__dict__, "field": name})
        results["fields"][name] = bench_field(name, fit, train, test, config.budget, config.eval_every)
        atomic_write_json(config.out, results)
        r = results["fields"][name]
        occupancy = r["occupancy_render"] or {}
        speedups = "/".join(str(occupancy.get(k, {}).get("speedup")) for k in ("training_grid", "render_grid"))
        print(f"{name:9s} params {r['params']:>9,}  queries/s {r['queries_per_second']:>9,}  "
              f"rays/s {r['train_rays_per_second']:>6,}  psnr {r['final_test_psnr']:6.2f}  "
              f"t25 {r['seconds_to_25db']}  t28 {r['seconds_to_28db']}  occupancy x{speedups} (training/render grid)",
              flush=True)
    return results
