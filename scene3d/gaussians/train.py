"""Fitting a Gaussian scene to a multi-view dataset (3DGS, Kerbl et al. 2023).

Loss (1 - lambda) L1 + lambda D-SSIM (lambda = 0.2), Adam with the paper's per-parameter rates
(means decayed exponentially to 1/100 over training), one SH degree more every
`sh_increase_every` steps, adaptive density control from `strategy.py`. Every run writes
`outputs/splats/<name>/`: config, TensorBoard + scalars.jsonl, rotating atomic checkpoints (resume
restores scene, optimizer, density statistics, RNG and step exactly), test metrics, renders, a
turntable video and the PLY.

Small CPU defaults (stated): 64x64 images, 2000 steps, densification from step 200 to 1500 every
100 with opacity reset every 1000, 5000 initial points. The paper's schedule is 30k steps with
densification 500..15k every 100 and resets every 3k (`DensifyStrategy()` defaults).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from scene3d.cameras import Cameras, orbit_cameras
from scene3d.checkpoint import restoring
from scene3d.data.dataset import MultiViewDataset
from scene3d.gaussians.ply import write_ply
from scene3d.gaussians.rasterize import rasterize
from scene3d.gaussians.scene import GaussianScene
from scene3d.gaussians.strategy import DensifyStrategy, DensityController
from scene3d.guard import FiniteGuard
from scene3d.metrics import psnr, ssim
from scene3d.runs import RunDir


def _cpu_densify() -> DensifyStrategy:
    return DensifyStrategy(refine_start=200, refine_stop=1500, refine_every=100, reset_every=1000)


@dataclass
class FitConfig:
    data: Path | None = None  # dataset folder (Blender / nerfstudio transforms.json); None: default synthetic world
    name: str = "default"
    output_root: Path = Path("outputs")
    steps: int = 2000
    init: str = "depth"  # "depth" (unproject dataset depth when present) or "random" (uniform in the bounds)
    n_init: int = 5000
    init_opacity: float = 0.1
    sh_degree: int = 3
    sh_increase_every: int = 500
    lambda_dssim: float = 0.2
    means_lr_final_factor: float = 0.01
    batch_cameras: int = 1
    eps2d: float = 0.3  # screen-space low-pass added to every 2D covariance (px^2; 3DGS and gsplat: 0.3)
    densify: DensifyStrategy = field(default_factory=_cpu_densify)
    random_background: bool = False
    eval_every: int = 500  # test PSNR every this many steps (logged, and kept in metrics.json "history")
    psnr_marks: tuple[float, ...] = (25.0, 28.0)  # metrics.json "seconds_to_psnr": training time to first reach each
    checkpoint_every: int = 500
    log_every: int = 20
    turntable_frames: int = 36
    export_mesh: bool = True  # TSDF-fuse rendered RGB-D of the training views into mesh.ply
    seed: int = 0
    resume: bool = True
    progress: bool = True
    nonfinite: str = "stop"  # NaN / inf loss, gradient or parameter: "stop" (naming step and tensor) or "skip"
    world_views: tuple[int, int, int] = (60, 4, 8)  # train/val/test views for the default world
    world_size: int = 64  # image size of the default world


def load_splits(cfg: FitConfig) -> dict[str, MultiViewDataset]:
    """train and test splits from `cfg.data`, or the default synthetic world rendered in memory."""
    if cfg.data is not None:
        from scene3d.data.formats import load_dataset

        splits = {"train": load_dataset(cfg.data, "train")}
        try:
            splits["test"] = load_dataset(cfg.data, "test")
        except Exception:  # noqa: BLE001 - a dataset without a test split evaluates on train views
            splits["test"] = splits["train"]
        return splits
    from scene3d.data.dataset import make_multiview_dataset
    from scene3d.data.synthetic import make_world

    n_train, n_val, n_test = cfg.world_views
    return make_multiview_dataset(make_world(0), n_train, n_val, n_test, cfg.world_size, cfg.world_size, seed=0)


def scene_extent(cameras: Cameras) -> float:
    """3DGS 'cameras extent': 1.1 x the largest camera distance from the cameras' centroid."""
    c = cameras.centers
    return 1.1 * float((c - c.mean(0)).norm(dim=-1).max())


def initial_scene(ds: MultiViewDataset, cfg: FitConfig, g: torch.Generator) -> GaussianScene:
    """Random points in the bounds, or points unprojected from the dataset's depth maps with their colours."""
    if cfg.init == "depth" and ds.depths is not None and (ds.depths > 0).any():
        n, h, w = ds.depths.shape
        valid = torch.nonzero(ds.depths.reshape(-1) > 0).squeeze(1)
        pick = valid[torch.randint(len(valid), (cfg.n_init,), generator=g)]
        view, pix = pick // (h * w), pick % (h * w)
        uv = torch.stack([pix % w, pix // w], -1).float() + 0.5
        depth = ds.depths.reshape(n, -1)[view, pix]
        pts = ds.cameras[view].unproject(uv[:, None, :], depth[:, None])[:, 0]
        colors = ds.images.reshape(n, -1, 3)[view, pix]
    elif cfg.init in ("depth", "random"):
        lo, hi = ds.aabb[0], ds.aabb[1]
        pts = lo + (hi - lo) * torch.rand(cfg.n_init, 3, generator=g)
        colors = torch.rand(cfg.n_init, 3, generator=g)
    else:
        raise ValueError(f"FitConfig.init must be 'depth' or 'random', got {cfg.init!r}")
    return GaussianScene.from_points(pts, colors, sh_degree=cfg.sh_degree, opacity=cfg.init_opacity)


def make_optimizer(scene: GaussianScene, extent: float) -> torch.optim.Adam:
    return torch.optim.Adam(scene.param_groups(scene_extent=extent), eps=1e-15)


def set_means_lr(opt: torch.optim.Optimizer, step: int, total: int, lr0: float, final_factor: float) -> None:
    t = min(step / max(total, 1), 1.0)
    for group in opt.param_groups:
        if group["name"] == "means":
            group["lr"] = lr0 * math.exp(t * math.log(final_factor))


def loss_fn(pred: torch.Tensor, target: torch.Tensor, lambda_dssim: float) -> torch.Tensor:
    return (1 - lambda_dssim) * (pred - target).abs().mean() + lambda_dssim * (1 - ssim(pred, target))


@torch.no_grad()
def evaluate(scene: GaussianScene, ds: MultiViewDataset, sh_degree: int | None = None, eps2d: float = 0.3) -> dict:
    preds = torch.cat([rasterize(scene, ds.cameras[i], background=ds.background, sh_degree=sh_degree,
                                 eps2d=eps2d).colors
                       for i in range(len(ds))]).clamp(0, 1)
    return {"psnr": float(psnr(preds, ds.images)), "ssim": float(ssim(preds, ds.images)), "renders": preds}


class _TrainClock:
    """Wall and process-CPU seconds since the start, minus the time spent inside `paused()`."""

    def __init__(self, wall: float = 0.0, cpu: float = 0.0):
        self.t0, self.c0 = time.perf_counter() - wall, time.process_time() - cpu

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.t0, time.process_time() - self.c0

    @contextmanager
    def paused(self):
        wall, cpu = self.read()
        yield wall, cpu
        self.t0, self.c0 = time.perf_counter() - wall, time.process_time() - cpu


def _state(scene, opt, ctrl, g, history: list[dict], elapsed: list[float]) -> dict:
    return {"scene": {k: v.detach() for k, v in scene.params.items()}, "optimizer": opt.state_dict(),
            "density": ctrl.state_dict(), "rng_torch": torch.get_rng_state(), "rng_sampler": g.get_state(),
            "history": history, "elapsed": elapsed}


def seconds_to_psnr(history: list[dict], marks: tuple[float, ...], key: str = "seconds") -> dict[str, float | None]:
    """Training seconds (`key`: "seconds" wall or "cpu_seconds") at the first evaluation reaching each
    PSNR mark (None: never reached)."""
    return {f"{m:g}": next((h[key] for h in history if h["psnr"] >= m), None) for m in marks}


def fit(cfg: FitConfig) -> dict:
    """Train, evaluate and export; returns the metrics written to metrics.json."""
    splits = load_splits(cfg)  # bad data fails before anything is written
    run = RunDir.create("splats", cfg.name, root=cfg.output_root)
    run.save_config(cfg)
    train, test = splits["train"], splits.get("test", splits["train"])
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    extent = scene_extent(train.cameras)
    start, ckpt = 0, run.load_latest() if cfg.resume else None
    history, elapsed = [], [0.0, 0.0]  # test evaluations; training [wall, CPU] seconds before a resume
    if ckpt is not None:
        state, _ = ckpt
        with restoring(run.latest_checkpoint(), "state"):
            scene = GaussianScene(**state["scene"])
            opt = make_optimizer(scene, extent)
            opt.load_state_dict(state["optimizer"])
            ctrl = DensityController(cfg.densify, scene, opt, extent)
            ctrl.load_state_dict(state["density"])
            torch.set_rng_state(state["rng_torch"])
            g.set_state(state["rng_sampler"])
            start = int(state["step"])
            history, elapsed = list(state.get("history", [])), list(state.get("elapsed", elapsed))
    else:
        scene = initial_scene(train, cfg, g)
        opt = make_optimizer(scene, extent)
        ctrl = DensityController(cfg.densify, scene, opt, extent)
    lr0 = scene.param_groups(scene_extent=extent)[0]["lr"]
    guard = FiniteGuard(cfg.nonfinite, run.path / "checkpoints")
    clock = _TrainClock(*elapsed)  # wall and CPU seconds of training, evaluation excluded
    bar = tqdm(range(start + 1, cfg.steps + 1), disable=not cfg.progress, desc="fit splats", initial=start,
               total=cfg.steps)
    for step in bar:
        set_means_lr(opt, step, cfg.steps, lr0, cfg.means_lr_final_factor)
        idx = torch.randint(len(train), (cfg.batch_cameras,), generator=g)
        bg = torch.rand(3, generator=g) if cfg.random_background else train.background
        degree = min(scene.sh_degree, (step - 1) // cfg.sh_increase_every)
        out = rasterize(scene, train.cameras[idx], background=bg, sh_degree=degree, eps2d=cfg.eps2d)
        target = train.images[idx]
        if cfg.random_background and train.masks is not None:
            target = torch.where(train.masks[idx][..., None], target, bg)
        loss = loss_fn(out.colors, target, cfg.lambda_dssim)
        changed = {}
        if guard.loss(step, loss):
            ctrl.before_backward(out)
            loss.backward()
            if guard.gradients(step, scene.params.items()):
                opt.step()
                changed = ctrl.after_backward(step, out)
            opt.zero_grad(set_to_none=True)
            guard.parameters(step, scene.params.items())
        if step % cfg.log_every == 0 or changed:
            run.log_scalars(step, {"train/loss": loss.item(), "train/num_gaussians": len(scene),
                                   **{f"density/{k}": v for k, v in changed.items()}})
            bar.set_postfix(loss=f"{loss.item():.4f}", n=len(scene))
        if step % cfg.eval_every == 0 and step < cfg.steps:  # the last step is evaluated by finish()
            with clock.paused() as (seconds, cpu_seconds):
                value = evaluate(scene, test, eps2d=cfg.eps2d)["psnr"]
            history.append({"step": step, "seconds": seconds, "cpu_seconds": cpu_seconds, "psnr": value,
                            "num_gaussians": len(scene)})
            run.log_scalars(step, {"test/psnr": value, "time/train_seconds": seconds})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            run.save_checkpoint(step, _state(scene, opt, ctrl, g, history, list(clock.read())), cfg)
    return finish(run, scene, train, test, cfg, clock.read(), history)


def finish(run: RunDir, scene: GaussianScene, train: MultiViewDataset, test: MultiViewDataset, cfg: FitConfig,
           train_time: tuple[float, float], history: list[dict]) -> dict:
    """Test metrics, renders, turntable video and PLY."""
    import imageio.v3 as iio

    from scene3d.viz import image_grid, save_png

    ev = evaluate(scene, test, eps2d=cfg.eps2d)
    history = [*history, {"step": cfg.steps, "seconds": train_time[0], "cpu_seconds": train_time[1], "psnr": ev["psnr"],
                          "num_gaussians": len(scene)}]
    k = min(4, len(test))
    save_png(run.file("renders", "test_grid.png"), image_grid([list(test.images[:k]), list(ev["renders"][:k])]))
    write_ply(run.file("scene.ply"), scene)
    centre = ((train.aabb[0] + train.aabb[1]) / 2).tolist()
    radius = float(train.cameras.centers.sub(torch.tensor(centre)).norm(dim=-1).mean())
    frames = []
    with torch.no_grad():
        turn = orbit_cameras(cfg.turntable_frames, radius, 30.0, 50.0, train.width, train.height, tuple(centre))
        for i in range(len(turn)):
            img = rasterize(scene, turn[i], background=train.background, eps2d=cfg.eps2d).colors[0].clamp(0, 1)
            frames.append((img * 255).to(torch.uint8).numpy())
    video = run.file("renders", "turntable.mp4")
    try:
        iio.imwrite(video, frames, fps=12, codec="libx264")
    except Exception:  # noqa: BLE001 - no ffmpeg: fall back to a GIF
        video = run.file("renders", "turntable.gif")
        iio.imwrite(video, frames, duration=1000 / 12, loop=0)
    metrics = {"test_psnr": ev["psnr"], "test_ssim": ev["ssim"], "num_gaussians": len(scene),
               "steps": cfg.steps, "train_seconds": train_time[0], "train_cpu_seconds": train_time[1],
               "threads": torch.get_num_threads(), "seconds_to_psnr": seconds_to_psnr(history, cfg.psnr_marks),
               "cpu_seconds_to_psnr": seconds_to_psnr(history, cfg.psnr_marks, "cpu_seconds"), "history": history,
               "ply": str(run.file("scene.ply")), "turntable": str(video)}
    if cfg.export_mesh:
        from scene3d.export import gaussians_to_mesh, save_mesh

        voxel = float((train.aabb[1] - train.aabb[0]).max()) / 128
        mesh = gaussians_to_mesh(scene, train.cameras, train.aabb, voxel_size=voxel)
        metrics["mesh"] = str(save_mesh(run.file("mesh.ply"), mesh))
        metrics["mesh_vertices"] = len(mesh.vertices)
    run.save_metrics(metrics)
    run.close()
    return metrics


def cpu_10min_preset() -> FitConfig:
    """The issue's time-to-quality benchmark: the default world (64x64, 60 train / 8 test views),
    aiming at >= 28 dB test PSNR within 10 minutes on 2 CPU cores. 2000 steps; densification from
    step 100 to 1000 every 100 with no opacity reset (a reset costs ~1000 steps of recovery) and at
    most 20k Gaussians (the step cost grows with the count: ~0.2 CPU s at 8k, ~0.5 at 22k); test
    PSNR every 100 steps so metrics.json's `seconds_to_psnr` is resolved to 100 steps. The 2D
    low-pass is 0.1 px^2 instead of 3DGS's 0.3: the world's images are point-sampled (one ray per
    pixel centre, aliased edges and textures), which a wider screen-space blur cannot reproduce
    (measured at 1000 steps: 28.5 dB against 26.6-27.0 dB with 0.3)."""
    return FitConfig(name="cpu10min", steps=2000, eval_every=100, eps2d=0.1,
                     densify=DensifyStrategy(refine_start=100, refine_stop=1000, refine_every=100, reset_every=10**9,
                                             max_gaussians=20_000))


PRESETS = {"default": FitConfig, "cpu10min": cpu_10min_preset}
