"""Benchmark: our tiled torch rasterizer vs the brute-force dense reference, side by side in one run
(`scripts/bench_rasterize.py`).

Scenes: N random anisotropic Gaussians in [-1,1]^3 (scales ~ half the mean spacing, opacities
U(0.1, 0.9)) seen from 4 units away. The dense reference costs pixels x Gaussians, so at large
sizes it is timed on a few pixel chunks and extrapolated linearly (exact for a per-pixel method;
flagged `dense_extrapolated`). Writes outputs/bench/rasterize.json; prints ratios. Wall-clock and
CPU times are both recorded (on a shared machine the CPU time is the steadier number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch

from scene3d.cameras import Cameras, orbit_cameras
from scene3d.checkpoint import atomic_write_json
from scene3d.config import Range, check
from scene3d.gaussians import GaussianScene, rasterize
from scene3d.gaussians.projection import covariance_3d, project_gaussians
from scene3d.gaussians.reference import composite_dense_image
from scene3d.timing import time_calls


@dataclass
class BenchConfig:
    quick: bool = False
    threads: Annotated[int, Range(1)] = 2
    out: Path = Path("outputs/bench/rasterize.json")
    pixel_chunk: Annotated[int, Range(1)] = 256

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


def ours(scene: GaussianScene, cams: Cameras, backward: bool) -> None:
    if backward:
        out = rasterize(scene, cams, backend="torch")
        (out.colors.sum() + out.depth.sum()).backward()
    else:
        with torch.no_grad():
            rasterize(scene, cams, backend="torch")


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


def compare(n: int, res: int, channels: int, repeats: int, pixel_chunk: int, max_chunks: int | None) -> dict:
    scene = bench_scene(n, channels)
    cams = orbit_cameras(1, 4.0, width=res, height=res)
    row: dict = {"n": n, "resolution": res, "channels": channels}
    with torch.no_grad():
        alpha = rasterize(scene, cams).alpha
    row["mean_alpha"] = float(alpha.mean())
    for mode, bwd in (("forward", False), ("forward_backward", True)):
        row[f"ours_{mode}"] = time_calls(lambda b=bwd: ours(scene, cams, b), repeats, stat="median")[0].as_dict()
        t, (frac, _) = time_calls(lambda b=bwd: dense(scene, cams, b, pixel_chunk, max_chunks), 1, warmup=0)
        row[f"dense_{mode}"] = {k: v / frac for k, v in t.as_dict().items()}
        row["dense_extrapolated"] = frac < 1
        row[f"speedup_{mode}"] = row[f"dense_{mode}"]["cpu_s"] / row[f"ours_{mode}"]["cpu_s"]
    return row


def check_equal(n: int, res: int) -> dict:
    """Max differences of images and of every parameter gradient, tiled vs dense (float32)."""
    scene = bench_scene(n)
    cams = orbit_cameras(1, 4.0, width=res, height=res)
    res_out = {}
    grads = []
    for backend in ("torch", "dense"):
        out = rasterize(scene, cams, backend=backend, background=(1.0, 1.0, 1.0))
        res_out[backend] = out.colors.detach()
        grads.append(torch.autograd.grad(out.colors.sum() + out.alpha.sum(), list(scene.params.values())))
    rel = {k: float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
           for k, a, b in zip(scene.params.keys(), *grads, strict=True) if b.numel() > 0}
    return {"n": n, "resolution": res, "image_max_abs_diff": float((res_out["torch"] - res_out["dense"]).abs().max()),
            "grad_max_rel_diff": rel}


def ours_only(n: int, res: int, channels: int, repeats: int) -> dict:
    scene = bench_scene(n, channels)
    cams = orbit_cameras(1, 4.0, width=res, height=res)
    return {"n": n, "resolution": res, "channels": channels,
            "forward": time_calls(lambda: ours(scene, cams, False), repeats, stat="median")[0].as_dict(),
            "forward_backward": time_calls(lambda: ours(scene, cams, True), repeats, stat="median")[0].as_dict()}


def run_bench(cfg: BenchConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    reps = 1 if cfg.quick else 3
    big_chunks = 2 if cfg.quick else 8
    result: dict = {"quick": cfg.quick, "threads": cfg.threads, "torch": torch.__version__,
                    "note": "measured on whatever machine ran this; a shared machine inflates wall time"}
    result["equality"] = check_equal(2000 if cfg.quick else 5000, 64)
    result["comparisons"] = [compare(5000, 64, 3, reps, cfg.pixel_chunk, None if not cfg.quick else 4),
                             compare(20000, 128, 3, reps, cfg.pixel_chunk, big_chunks),
                             compare(100000, 256, 3, reps, cfg.pixel_chunk, 1 if cfg.quick else 4)]
    ns = [5000, 10000, 20000, 40000] + ([] if cfg.quick else [80000, 160000])
    result["scaling_n"] = [ours_only(n, 128, 3, reps) for n in ns]
    result["scaling_pixels"] = [ours_only(20000, r, 3, reps) for r in ([64, 128, 256] + ([] if cfg.quick else [512]))]
    result["channels"] = [ours_only(20000, 128, c, reps) for c in (3, 32)]
    atomic_write_json(cfg.out, result)
    print(f"{'N':>7} {'res':>5} | {'ours fwd':>9} {'dense fwd':>10} {'x':>6} | {'ours f+b':>9} {'dense f+b':>10}"
          f" {'x':>6}   (CPU seconds)")
    for r in result["comparisons"]:
        print(f"{r['n']:>7} {r['resolution']:>5} | {r['ours_forward']['cpu_s']:>9.3f}"
              f" {r['dense_forward']['cpu_s']:>10.2f} {r['speedup_forward']:>6.1f} |"
              f" {r['ours_forward_backward']['cpu_s']:>9.3f} {r['dense_forward_backward']['cpu_s']:>10.2f}"
              f" {r['speedup_forward_backward']:>6.1f}" + ("  (dense extrapolated)" if r["dense_extrapolated"] else ""))
    for key in ("scaling_n", "scaling_pixels", "channels"):
        cells = [f"N={r['n']} {r['resolution']}^2 C={r['channels']}: fwd {r['forward']['cpu_s']:.3f}s"
                 f" f+b {r['forward_backward']['cpu_s']:.3f}s" for r in result[key]]
        print(f"{key}: " + ", ".join(cells))
    eq = result["equality"]
    print(f"tiled vs dense: image max |diff| {eq['image_max_abs_diff']:.2e}, grad max rel diff "
          f"{max(eq['grad_max_rel_diff'].values()):.2e}")
    print(f"wrote {cfg.out}")
    return result

