"""Benchmark: the compiled CPU rasterizer vs the tiled torch one vs the brute-force dense reference,
side by side in one run (`scripts/bench_rasterize.py`).

Scenes: N random anisotropic Gaussians in [-1,1]^3 (scales ~ half the mean spacing, opacities
U(0.1, 0.9)) seen from 4 units away. Backends are timed in interleaved rounds (each round times every
backend once) and the minimum over rounds is kept, so load from other processes hits all of them alike.
The dense reference costs pixels x Gaussians, so at large sizes it is timed on a few pixel chunks and
extrapolated linearly (exact for a per-pixel method; flagged `dense_extrapolated`). Also: 64 against 3
channels, 1 against `threads` threads, and `fit_splats` seconds per step at the demo's size (lab/demo/splats.py)
with either backend. Writes outputs/bench/rasterize.json; prints ratios. Wall-clock and CPU seconds are both
recorded (on a shared machine the CPU seconds are the steadier number).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch

from scene3d.cameras import Cameras, orbit_cameras
from scene3d.checkpoint import atomic_write_json
from scene3d.config import Range, check
from scene3d.gaussians import GaussianScene, compiled, rasterize
from scene3d.gaussians.projection import covariance_3d, project_gaussians
from scene3d.gaussians.reference import composite_dense_image
from scene3d.gaussians.strategy import DensifyStrategy
from scene3d.gaussians.train import FitConfig, SplatTrainer, load_splits
from scene3d.train import RunConfig, Stepper


@dataclass
class BenchConfig:
    quick: bool = False
    threads: Annotated[int, Range(1)] = 2
    out: Path = Path("outputs/bench/rasterize.json")
    pixel_chunk: Annotated[int, Range(1)] = 256
    fit_steps: Annotated[int, Range(1)] = 30  # fit_splats steps timed per backend (after 5 untimed)

    def __post_init__(self) -> None:
        check(self)


def bench_scene(n: int, channels: int = 3, seed: int = 0) -> GaussianScene:
    g = torch.Generator().manual_seed(seed)
    spacing = (8.0 / n) ** (1 / 3)
    means = torch.rand(n, 3, generator=g) * 2 - 1
    log_scales = math.log(0.5 * spacing) + 0.3 * torch.randn(n, 3, generator=g)
    logits = torch.logit(0.1 + 0.8 * torch.rand(n, generator=g))
    quats = torch.randn(n, 4, generator=g)
    if channels == 3:
        return GaussianScene(means, quats, log_scales, logits, sh0=torch.randn(n, 1, 3, generator=g) * 0.5)
    return GaussianScene(means, quats, log_scales, logits, features=torch.randn(n, channels, generator=g))


def render(scene: GaussianScene, cams: Cameras, backend: str, backward: bool) -> None:
    if backward:
        out = rasterize(scene, cams, backend=backend)
        (out.colors.sum() + out.depth.sum()).backward()
    else:
        with torch.no_grad():
            rasterize(scene, cams, backend=backend)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, dict[str, float]]:
    """Min wall and CPU seconds of each function over `rounds` rounds that call every function once
    (after one untimed call each)."""
    for fn in fns.values():
        fn()
    best = {k: {"wall_s": math.inf, "cpu_s": math.inf} for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            best[k]["wall_s"] = min(best[k]["wall_s"], time.perf_counter() - wall)
            best[k]["cpu_s"] = min(best[k]["cpu_s"], time.process_time() - cpu)
    return best


def dense(scene: GaussianScene, cams: Cameras, backward: bool, pixel_chunk: int, max_chunks: int | None
          ) -> tuple[float, torch.Tensor | None]:
    """Brute force: every pixel against every Gaussian (depth sorted). Forward+backward runs chunk by
    chunk through detached screen-space leaves, so memory stays bounded. Returns the fraction of the
    image processed and the colours of that part."""
    w, h = cams.width, cams.height
    with torch.set_grad_enabled(backward):
        proj = project_gaussians(scene.means, covariance_3d(scene.quats, scene.scales), cams.w2c, cams.K, w, h)
        colors = scene.colors(cams.centers)[0]
        feats = torch.cat([colors, proj.depths[0, :, None]], -1)
        inputs = [proj.means2d[0], proj.conics[0], scene.opacities, feats]
        leaves = [x.detach().requires_grad_(backward) for x in inputs]
        v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pixels = torch.stack([u, v], -1).reshape(-1, 2).float() + 0.5
        n_chunks = math.ceil(len(pixels) / pixel_chunk)
        todo = n_chunks if max_chunks is None else min(max_chunks, n_chunks)
        stride = max(n_chunks // todo, 1)
        outs = []
        for k in range(todo):
            px = pixels[k * stride * pixel_chunk:(k * stride + 1) * pixel_chunk]
            acc, _ = composite_dense_image(*leaves, proj.depths[0].detach(), proj.radii[0].all(-1) > 0, px)
            if backward:
                (acc.sum()).backward()
            outs.append(acc.detach())
        if backward:
            torch.autograd.backward(inputs, [leaf.grad for leaf in leaves])
    return todo / n_chunks, torch.cat(outs)


def compare(n: int, res: int, channels: int, rounds: int, pixel_chunk: int, max_chunks: int | None) -> dict:
    """Forward+backward seconds of compiled, torch and dense on one scene (forward alone for compiled)."""
    scene = bench_scene(n, channels)
    cams = orbit_cameras(1, 4.0, width=res, height=res)
    row: dict = {"n": n, "resolution": res, "channels": channels}
    with torch.no_grad():
        row["mean_alpha"] = float(rasterize(scene, cams).alpha.mean())
    row.update(interleaved({"compiled_forward": lambda: render(scene, cams, "compiled", False),
                            "compiled": lambda: render(scene, cams, "compiled", True),
                            "torch": lambda: render(scene, cams, "torch", True)}, rounds))
    wall, cpu = time.perf_counter(), time.process_time()
    frac, _ = dense(scene, cams, True, pixel_chunk, max_chunks)
    row["dense"] = {"wall_s": (time.perf_counter() - wall) / frac, "cpu_s": (time.process_time() - cpu) / frac}
    row["dense_extrapolated"] = frac < 1
    for k in ("torch", "dense"):
        row[f"{k}_over_compiled"] = row[k]["wall_s"] / row["compiled"]["wall_s"]
    return row


def check_equal(n: int, res: int) -> dict:
    """Max differences of images and of every parameter gradient, compiled and torch vs dense (float32)."""
    scene = bench_scene(n)
    cams = orbit_cameras(1, 4.0, width=res, height=res)
    images, grads = {}, {}
    for backend in ("compiled", "torch", "dense"):
        out = rasterize(scene, cams, backend=backend, background=(1.0, 1.0, 1.0))
        images[backend] = out.colors.detach()
        grads[backend] = torch.autograd.grad(out.colors.sum() + out.alpha.sum(), list(scene.params.values()))
    result = {"n": n, "resolution": res}
    for backend in ("compiled", "torch"):
        rel = [float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
               for a, b in zip(grads[backend], grads["dense"], strict=True) if b.numel() > 0]
        result[backend] = {"image_max_abs_diff": float((images[backend] - images["dense"]).abs().max()),
                           "grad_max_rel_diff": max(rel)}
    return result


def thread_scaling(n: int, res: int, threads: int, rounds: int) -> dict:
    """Compiled forward+backward wall seconds with 1 and with `threads` threads."""
    scene = bench_scene(n)
    cams = orbit_cameras(1, 4.0, width=res, height=res)

    def with_threads(k: int) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(k)
            try:
                render(scene, cams, "compiled", True)
            finally:
                torch.set_num_threads(threads)
        return run

    t = interleaved({"1": with_threads(1), str(threads): with_threads(threads)}, rounds)
    return {"n": n, "resolution": res, "threads": threads, "one_thread_s": t["1"]["wall_s"],
            "threads_s": t[str(threads)]["wall_s"], "speedup": t["1"]["wall_s"] / t[str(threads)]["wall_s"]}


def fit_step_seconds(steps: int, out_root: Path) -> dict:
    """Seconds per `fit_splats` step at the demo's size (64x64 world, 5000 initial Gaussians), compiled
    against torch: two trainers from the same seed, stepped in alternating blocks of 5 steps."""
    cfg = FitConfig(data=None, steps=1000, n_init=5000, world_views=(60, 4, 8), world_size=64,
                    densify=DensifyStrategy(refine_start=100, refine_stop=750, refine_every=100, reset_every=10**9),
                    run=RunConfig(name="bench", output_root=out_root, progress=False))
    splits = load_splits(cfg)
    trainers = {k: Stepper(SplatTrainer(cfg, splits["train"], splits.get("test", splits["train"])))
                for k in ("compiled", "torch")}
    spent = {k: {"wall_s": 0.0, "cpu_s": 0.0} for k in trainers}
    for block in range(1 + steps // 5):
        for k, stepper in trainers.items():
            with compiled.disabled() if k == "torch" else nullcontext():
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(5):
                    stepper()
                if block > 0:  # the first block warms up
                    spent[k]["wall_s"] += time.perf_counter() - wall
                    spent[k]["cpu_s"] += time.process_time() - cpu
    per_step = {k: {m: v / (5 * (steps // 5)) for m, v in t.items()} for k, t in spent.items()}
    return {**per_step, "gaussians": len(trainers["compiled"].trainable.scene),
            "torch_over_compiled_cpu": per_step["torch"]["cpu_s"] / per_step["compiled"]["cpu_s"],
            "torch_over_compiled_wall": per_step["torch"]["wall_s"] / per_step["compiled"]["wall_s"]}


def run_bench(cfg: BenchConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    if compiled.kernel() is None:
        raise RuntimeError("the compiled kernel did not build (see the warning above); nothing to compare")
    rounds = 2 if cfg.quick else 8  # minimum of 8: this machine's second core comes and goes
    result: dict = {"quick": cfg.quick, "threads": cfg.threads, "torch": torch.__version__,
                    "note": "measured on whatever machine ran this; a shared machine inflates wall time"}
    result["equality"] = check_equal(2000 if cfg.quick else 5000, 64)
    sizes = [(20000, 128, 3, 8), (20000, 128, 64, 8), (100000, 256, 3, 1), (100000, 256, 64, 1)]
    result["comparisons"] = [compare(n, r, c, rounds, cfg.pixel_chunk, 2 if cfg.quick else chunks)
                             for n, r, c, chunks in (sizes[:3] if cfg.quick else sizes)]
    result["threads_scaling"] = [thread_scaling(20000, 128, cfg.threads, 2 * rounds),
                                 thread_scaling(100000, 256, cfg.threads, 2 * rounds)]
    result["fit_splats"] = fit_step_seconds(10 if cfg.quick else cfg.fit_steps, cfg.out.parent / "rasterize_fit")
    atomic_write_json(cfg.out, result)
    print(f"forward+backward wall seconds, {cfg.threads} threads (min of {rounds} interleaved rounds)")
    print(f"{'N':>7} {'res':>4} {'ch':>3} | {'compiled':>8} {'(fwd)':>7} {'torch':>7} {'dense':>8} |"
          f" {'torch/comp':>10} {'dense/comp':>10}")
    for r in result["comparisons"]:
        print(f"{r['n']:>7} {r['resolution']:>4} {r['channels']:>3} | {r['compiled']['wall_s']:>8.4f}"
              f" {r['compiled_forward']['wall_s']:>7.4f} {r['torch']['wall_s']:>7.3f} {r['dense']['wall_s']:>8.2f} |"
              f" {r['torch_over_compiled']:>10.1f} {r['dense_over_compiled']:>10.0f}"
              + ("  (dense extrapolated)" if r["dense_extrapolated"] else ""))
    by = {(r["n"], r["channels"]): r["compiled"]["wall_s"] for r in result["comparisons"]}
    for n in (20000, 100000):
        if (n, 64) in by:
            print(f"64 / 3 channels, N={n}: {by[(n, 64)] / by[(n, 3)]:.2f}x the time")
    for t in result["threads_scaling"]:
        print(f"threads, N={t['n']} {t['resolution']}^2: 1 thread {t['one_thread_s']:.4f}s, {t['threads']} threads "
              f"{t['threads_s']:.4f}s, speedup {t['speedup']:.2f}x")
    f = result["fit_splats"]
    print(f"fit_splats at the demo's size ({f['gaussians']} Gaussians): compiled {f['compiled']['cpu_s']:.3f} CPU s"
          f" ({f['compiled']['wall_s']:.3f} wall) a step, torch {f['torch']['cpu_s']:.3f} CPU s"
          f" ({f['torch']['wall_s']:.3f} wall): {f['torch_over_compiled_cpu']:.1f}x fewer CPU seconds")
    for backend in ("compiled", "torch"):
        eq = result["equality"][backend]
        print(f"{backend} vs dense: image max |diff| {eq['image_max_abs_diff']:.2e}, grad max rel diff "
              f"{eq['grad_max_rel_diff']:.2e}")
    print(f"wrote {cfg.out}")
    return result
