"""Benchmark of CanViT inference and training, measured side by side in one run (ratios, not
absolute claims): per-glimpse latency against canvas size next to a passive ViT with the same
output grid and next to the unoptimised canvas path (`CanViT(fast_canvas=False)`, the reference modules
of `avfm.attention`, timed alternately with the fast path on the same model and threads), step 1 against
step 32 of a rollout, training glimpses per second and achieved FLOP/s as a fraction of this machine's
measured matmul FLOP/s."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import torch

from avfm.flops import canvit_flops, vit_flops
from avfm.glimpse import Viewpoint, sample_viewpoints
from avfm.model import CONFIGS, CanViT, build_model, count_params
from avfm.train import OptimConfig, TrainConfig, train_step
from avfm.vit import ViT, ViTConfig
from scene3d.config import Range, check
from scene3d.timing import time_calls

PAPER = {"canvit_b_params_m": 95.2, "canvit_b_gflops_32": 15.8, "canvas_rw_pair_gflops_64": 2.8}


@dataclass
class BenchConfig:
    quick: bool = False
    out: str = "outputs/bench/avfm.json"
    threads: Annotated[int | None, Range(1, 1024)] = None
    # skip a passive ViT forward predicted (from the last one's FLOP/s) to take longer
    passive_max_s: Annotated[float, Range(0, above=True)] = 900.0

    def __post_init__(self) -> None:
        check(self)


def matmul_flops_per_s(n: int = 1024, iters: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / time_calls(lambda: a @ b, repeats=iters, warmup=2)[0].wall_s


@torch.no_grad()
def glimpse_latency(model: CanViT, grid: int, warmup: int, iters: int) -> float:
    state = model.init_state(1, grid)
    glimpse = torch.rand(1, 3, model.cfg.glimpse_px, model.cfg.glimpse_px)
    step = lambda: model.step(glimpse, Viewpoint.full(1), state, heads=False)  # noqa: E731
    return time_calls(step, repeats=iters, warmup=warmup)[0].wall_s


@torch.no_grad()
def fast_vs_reference(model: CanViT, grid: int, warmup: int, iters: int) -> dict[str, float]:
    """Per-glimpse latency (minimum over `iters`) of the fast canvas path and of the reference path, called
    alternately so both see the same load, and the largest difference between their new canvases."""
    state = model.init_state(1, grid)
    glimpse = torch.rand(1, 3, model.cfg.glimpse_px, model.cfg.glimpse_px)
    times: dict[bool, list[float]] = {True: [], False: []}
    canvases = {}
    for k in range(warmup + iters):
        for fast in (True, False):
            model.fast_canvas = fast
            t = time.perf_counter()
            new, _ = model.step(glimpse, Viewpoint.full(1), state, heads=False)
            if k >= warmup:
                times[fast].append(time.perf_counter() - t)
            canvases[fast] = new.canvas
    model.fast_canvas = True
    return {"fast_ms": 1e3 * min(times[True]), "reference_ms": 1e3 * min(times[False]),
            "max_abs_diff": float((canvases[True] - canvases[False]).abs().max())}


@torch.no_grad()
def step1_vs_step32(model: CanViT, grid: int, repeats: int = 6) -> dict[str, float]:
    """Latency of step 1 (fresh state) and step 32 (state after 31 random glimpses), timed
    alternately so both see the same machine load; minimum over repeats."""
    glimpse = torch.rand(1, 3, model.cfg.glimpse_px, model.cfg.glimpse_px)
    g = torch.Generator().manual_seed(0)
    fresh = state = model.init_state(1, grid)
    for _ in range(31):
        state, _ = model.step(glimpse, sample_viewpoints(1, g), state, heads=False)
    vp = sample_viewpoints(1, g)
    first, late = [], []
    for _ in range(repeats + 1):
        for start, times in ((fresh, first), (state, late)):
            t = time.perf_counter()
            model.step(glimpse, vp, start, heads=False)
            times.append(time.perf_counter() - t)
    step1, step32 = min(first[1:]), min(late[1:])
    return {"step1_ms": 1e3 * step1, "step32_ms": 1e3 * step32, "step32_over_step1": step32 / step1}


@torch.no_grad()
def passive_latency(cfg: ViTConfig, px: int, warmup: int, iters: int) -> float:
    vit = ViT(cfg).eval()
    img = torch.rand(1, 3, px, px)
    return time_calls(lambda: vit(img), repeats=iters, warmup=warmup)[0].wall_s


def passive_skip_reason(g: int, quick: bool, predicted_s: float | None, max_s: float) -> str | None:
    """Why the passive ViT at output grid g is not run (None: run it). `predicted_s` extrapolates
    from the FLOP/s of the previous, smaller forward (None for the first)."""
    if quick and g > 32:  # a 1024 px ViT-B forward takes tens of seconds on 2 cores
        return "quick mode"
    if predicted_s is not None and predicted_s > max_s:
        return f"predicted {predicted_s:.0f} s > passive_max_s {max_s:.0f} s"
    return None


def training_throughput(name: str, batch: int, steps: int) -> dict:
    """Glimpses per second of `train_step` (forward + backward, both rollouts) on random targets."""
    model = build_model(name)
    cfg = TrainConfig(model=name, optim=OptimConfig())
    g2, dt = model.cfg.canvas_grid**2, model.cfg.teacher_dim
    scenes = torch.rand(batch, 3, 2 * model.cfg.glimpse_px, 2 * model.cfg.glimpse_px)
    patches, cls = torch.randn(batch, g2, dt), torch.randn(batch, dt)
    glimpses, t0 = 0, None
    for k in range(steps + 1):
        if k == 1:
            t0 = time.perf_counter()
        info = train_step(model, scenes, patches, cls, torch.Generator().manual_seed(k), cfg)
        model.zero_grad(set_to_none=True)
        if k >= 1:
            glimpses += info["glimpses"] * batch
    seconds = time.perf_counter() - t0
    per_glimpse = canvit_flops(model.cfg, heads=True)["total"]
    return {"glimpses_per_s": glimpses / seconds, "flops_per_s": 3 * per_glimpse * glimpses / seconds}


def run_bench(cfg: BenchConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    warmup, iters = (1, 4) if cfg.quick else (3, 10)
    b = build_model("canvit_b").eval()
    tiny = build_model("canvit_tiny").eval()
    result: dict = {
        "quick": cfg.quick,
        "threads": torch.get_num_threads(),
        "paper": PAPER,
        "canvit_b_params_m": count_params(b) / 1e6,
        "canvit_b_params_with_heads_m": count_params(b, heads=True) / 1e6,
        "canvit_b_gflops": {
            g: canvit_flops(CONFIGS["canvit_b"], g)["total"] / 1e9 for g in (16, 32, 64, 128)
        },
        "canvit_b_rw_pair_gflops_64": sum(
            canvit_flops(CONFIGS["canvit_b"], 64)[k] for k in ("reads", "writes")
        )
        / 3e9,
    }
    result["params_ratio_to_paper"] = result["canvit_b_params_m"] / PAPER["canvit_b_params_m"]
    result["gflops32_ratio_to_paper"] = result["canvit_b_gflops"][32] / PAPER["canvit_b_gflops_32"]

    grids = (16, 32, 64) if cfg.quick else (16, 32, 64, 128)
    vit_b = ViTConfig(dim=768, depth=12, heads=12, patch_size=16, registers=4)
    peak = matmul_flops_per_s()
    latency, vit_flop_rate = {}, None
    for g in grids:
        paths = fast_vs_reference(b, g, min(warmup, 2), iters if g < 128 else max(2, iters // 3))
        flops = canvit_flops(CONFIGS["canvit_b"], g)["total"]
        row = {
            "canvit_b_ms": paths["fast_ms"],
            "canvit_b_reference_ms": paths["reference_ms"],
            "canvit_b_speedup": paths["reference_ms"] / paths["fast_ms"],
            "canvit_b_fraction_of_matmul": flops / (paths["fast_ms"] / 1e3) / peak,
            "canvit_b_reference_fraction_of_matmul": flops / (paths["reference_ms"] / 1e3) / peak,
            "canvit_b_fast_vs_reference_max_abs_diff": paths["max_abs_diff"],
            "canvit_tiny_ms": 1e3 * glimpse_latency(tiny, g, warmup, iters),
            "vit_b_gflops": vit_flops(768, 12, 4.0, 16, 16 * g, 5) / 1e9,
        }
        predicted = None if vit_flop_rate is None else row["vit_b_gflops"] / vit_flop_rate
        if reason := passive_skip_reason(g, cfg.quick, predicted, cfg.passive_max_s):
            row["vit_b_skipped"] = reason
        else:
            if predicted is not None:
                print(f"passive ViT-B at {16 * g} px: predicted {predicted:.0f} s", flush=True)
            # at 1024 px and above a single forward, no warm-up: one lasts from seconds to minutes here
            repeats = (min(warmup, 1), max(1, iters // 3)) if g <= 32 else (0, 1)
            row["vit_b_ms"] = 1e3 * passive_latency(vit_b, 16 * g, *repeats)
            row["vit_b_over_canvit_b"] = row["vit_b_ms"] / row["canvit_b_ms"]
            vit_flop_rate = row["vit_b_gflops"] / (row["vit_b_ms"] / 1e3)
        latency[g] = row
        print(f"canvas {g}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in row.items()), flush=True)
    result["latency_vs_canvas"] = latency
    result[f"canvit_b_latency_growth_16_to_{grids[-1]}"] = (
        latency[grids[-1]]["canvit_b_ms"] / latency[16]["canvit_b_ms"]
    )
    if "vit_b_ms" in latency[32]:
        result["vit_b_latency_growth_16_to_32"] = latency[32]["vit_b_ms"] / latency[16]["vit_b_ms"]
        result["canvit_b_latency_growth_16_to_32"] = latency[32]["canvit_b_ms"] / latency[16]["canvit_b_ms"]

    result["rollout_canvit_b_canvas32"] = step1_vs_step32(b, 32, 3 if cfg.quick else 10)
    result["rollout_canvit_tiny_canvas32"] = step1_vs_step32(tiny, 32, 10)

    peak = matmul_flops_per_s()  # again, next to the training run: the machine's rate drifts with its load
    tp = training_throughput("canvit_tiny", 8, 2 if cfg.quick else 6)
    result["training_canvit_tiny"] = {
        **tp,
        "matmul_flops_per_s": peak,
        "fraction_of_matmul": tp["flops_per_s"] / peak,
    }
    return result
