"""Fit any registered field to a multi-view dataset: random ray batches, photometric MSE plus the
architecture's regulariser, Adam with exponential decay, an occupancy grid refreshed as it trains,
periodic test PSNR/SSIM, test renders, a turntable video, and checkpoints with exact resume
(field, optimizer, occupancy grid, RNG states and step)."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor
from tqdm import tqdm

from scene3d.cameras import Cameras, orbit_cameras
from scene3d.data.dataset import MultiViewDataset, make_multiview_dataset
from scene3d.data.formats import load_dataset
from scene3d.data.synthetic import WorldConfig, make_world
from scene3d.errors import CheckpointError
from scene3d.fields.base import Field, build_field, field_spec, load_field_state
from scene3d.guard import FiniteGuard
from scene3d.metrics import psnr, ssim
from scene3d.rays import Rays
from scene3d.render import OccupancyGrid, OccupancyGridConfig, render_image, render_rays
from scene3d.runs import RunDir, config_to_dict


@dataclass
class FitConfig:
    """Fitting one field. `data`: a Blender / nerfstudio folder, or None for the synthetic demo
    world. Runs go to `<output_root>/fields/<name>/` and resume from their latest checkpoint."""

    field: str = "hashgrid"
    preset: str = "default"
    data: Path | None = None
    name: str | None = None
    output_root: Path = Path("outputs")
    steps: int = 2000
    batch_rays: int = 1024
    n_samples: int = 64
    lr_final_ratio: float | None = None  # None: the architecture's (FieldConfig.lr_final_ratio)
    use_occupancy: bool = True
    occupancy: OccupancyGridConfig = dataclasses.field(default_factory=OccupancyGridConfig)
    random_background: bool = False
    eval_every: int = 500
    eval_views: int = 4
    checkpoint_every: int = 500
    turntable_frames: int = 24
    seed: int = 0
    resume: bool = True
    device: str = "auto"
    nonfinite: str = "stop"  # NaN / inf loss, gradient or parameter: "stop" (naming step and tensor) or "skip"
    # The synthetic world when `data` is None (views per split, image size).
    world_seed: int = 0
    n_train_views: int = 40
    n_test_views: int = 8
    image_size: int = 64

    @property
    def run_name(self) -> str:
        return self.name or f"{self.field}"


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FieldTrainer:
    """Owns the field, optimizer, occupancy grid and RNG; `train_step` is one optimisation step."""

    def __init__(self, config: FitConfig, train: MultiViewDataset, test: MultiViewDataset | None = None,
                 field: Field | None = None):
        self.config = config
        self.device = pick_device(config.device)
        self.train_data, self.test_data = train, test
        aabb = tuple(train.aabb.flatten().tolist())
        self.field = (field or build_field(config.field, config.preset, aabb=aabb)).to(self.device)
        self.lr_final_ratio = (self.field.config.lr_final_ratio if config.lr_final_ratio is None
                               else config.lr_final_ratio)
        grid = dataclasses.replace(config.occupancy, render_samples=config.n_samples)
        self.occupancy = (OccupancyGrid(self.field.aabb, grid).to(self.device)
                          if config.use_occupancy else None)
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        self.step = 0
        rays = train.cameras.rays().flatten()
        self.origins, self.dirs = rays.origins.to(self.device), rays.dirs.to(self.device)
        self.targets = rearrange(train.images, "n h w c -> (n h w) c").to(self.device)
        self.masks = (rearrange(train.masks, "n h w -> (n h w)").to(self.device).float()
                      if train.masks is not None else None)
        self.background = train.background.to(self.device).float()
        self.optimizer = self._make_optimizer()
        self.guard = FiniteGuard(config.nonfinite)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        groups = [{**g, "base_lr": g["lr"]} for g in self.field.param_groups()]
        return torch.optim.Adam(groups, betas=(0.9, 0.99))

    def _set_learning_rate(self) -> None:
        decay = self.lr_final_ratio ** min(self.step / max(self.config.steps, 1), 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * decay

    def train_step(self) -> dict[str, float]:
        """One step on a random batch of training rays; returns the loss and the batch PSNR."""
        c = self.config
        self.field.train()
        if self.field.on_train_step(self.step):
            self.optimizer = self._make_optimizer()
        if self.occupancy is not None and self.step % c.occupancy.update_every == 0:
            self.occupancy.update(self.field.density, self.step, self.generator)
        self._set_learning_rate()
        idx = torch.randint(0, len(self.targets), (c.batch_rays,), generator=self.generator,
                            device=self.device)
        rays = Rays(self.origins[idx], self.dirs[idx], torch.zeros_like(idx, dtype=torch.float32),
                    torch.full_like(idx, 1e10, dtype=torch.float32))
        background = "random" if c.random_background and self.masks is not None else self.background
        out = render_rays(self.field, rays, c.n_samples, perturb=True, background=background,
                          occupancy=self.occupancy, generator=self.generator)
        target = self.targets[idx]
        if c.random_background and self.masks is not None:
            mask = self.masks[idx, None]
            target = target * mask + out["background"] * (1 - mask)
        mse = torch.nn.functional.mse_loss(out["rgb"], target)
        loss = mse + self.field.regularization()
        self.optimizer.zero_grad(set_to_none=True)
        step = self.step + 1
        if self.guard.loss(step, loss):
            loss.backward()
            if self.guard.gradients(step, self.field.named_parameters()):
                self.optimizer.step()
            self.guard.parameters(step, self.field.named_parameters())
        self.step += 1
        return {"loss": loss.item(), "train_psnr": -10 * math.log10(max(mse.item(), 1e-10))}

    # evaluation --------------------------------------------------------------------------------
    def render(self, cameras: Cameras) -> dict[str, Tensor]:
        self.field.eval()
        return render_image(self.field, cameras.to(self.device), self.config.n_samples,
                            background=self.background, occupancy=self.occupancy)

    def evaluate(self, n_views: int | None = None) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Test PSNR / SSIM over the first n_views test views (all when None) and the renders."""
        data = self.test_data
        n = len(data.cameras) if n_views is None else min(n_views, len(data.cameras))
        start = time.perf_counter()
        out = self.render(data.cameras[:n])
        seconds = time.perf_counter() - start
        pred, target = out["rgb"].clamp(0, 1).cpu(), data.images[:n].float()
        metrics = {"test_psnr": mean_over_views(psnr, pred, target), "test_ssim": mean_over_views(ssim, pred, target),
                   "render_seconds_per_view": seconds / n}
        return metrics, out

    # state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {"field": self.field.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}}
        if self.occupancy is not None:
            state["occupancy"] = self.occupancy.state_dict()
        return state

    def checkpoint_config(self) -> dict[str, Any]:
        return {**field_spec(self.field), "fit": config_to_dict(self.config)}

    def load_state_dict(self, state: dict[str, Any], path: Path | None = None) -> None:
        """Restore a `state_dict()` (plus its `step`) exactly, including a resized TensoRF grid."""
        try:
            load_field_state(self.field, state["field"], path)
            self.optimizer = self._make_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
            if self.occupancy is not None:
                self.occupancy.load_state_dict(state["occupancy"])
            self.generator.set_state(state["rng"]["generator"])
            torch.set_rng_state(state["rng"]["torch"])
            self.step = int(state["step"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(path, "trainer state", f"cannot resume ({err})") from None


def mean_over_views(metric, pred: Float[Tensor, "N H W 3"], target: Float[Tensor, "N H W 3"]) -> float:
    """A per-image metric averaged over views (the usual way test PSNR is reported)."""
    return float(torch.stack([metric(p, t) for p, t in zip(pred, target, strict=True)]).mean())


# outputs ------------------------------------------------------------------------------------------
def to_uint8(image: Float[Tensor, "H W C"]) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().byte().cpu().numpy()


def depth_to_rgb(depth: Float[Tensor, "H W"]) -> Float[Tensor, "H W 3"]:
    """Depth normalised to [0, 1] over its positive range, as grey."""
    valid = depth > 0
    lo = depth[valid].min() if valid.any() else depth.new_tensor(0.0)
    hi = depth.max().clamp_min(lo + 1e-6)
    return ((depth - lo) / (hi - lo)).clamp(0, 1)[..., None].expand(*depth.shape, 3) * valid[..., None]


def save_test_renders(run: RunDir, out: dict[str, Tensor], targets: Float[Tensor, "N H W 3"]) -> list[Path]:
    """PNG per test view: ground truth | prediction | depth."""
    paths = []
    for i in range(len(targets)):
        row = torch.cat([targets[i].cpu(), out["rgb"][i].cpu(), depth_to_rgb(out["depth"][i].cpu())], dim=1)
        path = run.file("renders", f"test_{i:03d}.png")
        iio.imwrite(path, to_uint8(row))
        paths.append(path)
    return paths


def turntable_cameras(train: Cameras, aabb: Float[Tensor, "2 3"], n_frames: int) -> Cameras:
    """An orbit around the box centre at the training cameras' mean distance and elevation."""
    center = aabb.mean(dim=0)
    offsets = train.centers - center
    radius = offsets.norm(dim=-1).mean().item()
    elevation = torch.rad2deg(torch.asin(offsets[:, 2] / offsets.norm(dim=-1))).mean().item()
    return orbit_cameras(n_frames, radius, elevation, math.degrees(train.fov_x[0].item()), train.width,
                         train.height, target=tuple(center.tolist()))


def save_turntable(trainer: FieldTrainer, run: RunDir, n_frames: int) -> Path:
    cams = turntable_cameras(trainer.train_data.cameras, trainer.field.aabb.cpu(), n_frames)
    frames = np.stack([to_uint8(f) for f in trainer.render(cams)["rgb"]])
    path = run.file("turntable.mp4")
    iio.imwrite(path, frames, fps=12, codec="libx264", macro_block_size=1)
    return path


def load_data(config: FitConfig) -> tuple[MultiViewDataset, MultiViewDataset]:
    """(train, test) splits: from `config.data`, or rendered from the synthetic world."""
    if config.data is not None:
        return load_dataset(config.data, "train"), load_dataset(config.data, "test")
    world = make_world(config.world_seed, WorldConfig())
    splits = make_multiview_dataset(world, n_train=config.n_train_views, n_val=0, n_test=config.n_test_views,
                                    width=config.image_size, height=config.image_size, seed=config.world_seed)
    return splits["train"], splits["test"]


# the loop -----------------------------------------------------------------------------------------
def fit_field(config: FitConfig, train: MultiViewDataset, test: MultiViewDataset, run: RunDir | None = None,
              field: Field | None = None, progress: bool = True) -> tuple[FieldTrainer, dict[str, Any]]:
    """Train to `config.steps` (resuming from the run's latest checkpoint when `config.resume`),
    evaluate, write renders, a turntable video and metrics. Returns the trainer and final metrics."""
    run = run or RunDir.create("fields", config.run_name, root=config.output_root)
    run.save_config(config)
    torch.manual_seed(config.seed)  # the field's initialisation: same seed, same run (a resume restores the RNG)
    trainer = FieldTrainer(config, train, test, field)
    trainer.guard.checkpoint_dir = run.path / "checkpoints"
    loaded = run.load_latest(trainer.device) if config.resume else None
    if loaded is not None:
        trainer.load_state_dict(loaded[0], run.path / "checkpoints" / f"step_{int(loaded[0]['step']):07d}.safetensors")
    bar = tqdm(total=config.steps, initial=trainer.step, disable=not progress, desc=f"fit {config.field}")
    start, timeline = time.perf_counter(), []
    while trainer.step < config.steps:
        logs = trainer.train_step()
        bar.update(1)
        step = trainer.step
        if step % 50 == 0 or step == config.steps:
            bar.set_postfix(psnr=f"{logs['train_psnr']:.2f}")
            run.log_scalars(step, {f"train/{k}": v for k, v in logs.items()})
        if step % config.eval_every == 0 or step == config.steps:
            metrics, _ = trainer.evaluate(config.eval_views)
            timeline.append({"step": step, "seconds": time.perf_counter() - start, **metrics})
            run.log_scalars(step, {f"test/{k}": v for k, v in metrics.items()})
        if step % config.checkpoint_every == 0 or step == config.steps:
            run.save_checkpoint(step, trainer.state_dict(), trainer.checkpoint_config())
    bar.close()
    metrics, out = trainer.evaluate()
    save_test_renders(run, out, test.images)
    if config.turntable_frames:
        save_turntable(trainer, run, config.turntable_frames)
    result = {"field": config.field, "params": trainer.field.parameter_count(), "steps": trainer.step,
              "train_seconds": time.perf_counter() - start, **metrics, "timeline": timeline}
    if trainer.occupancy is not None:
        result["occupied_fraction"] = trainer.occupancy.occupied_fraction
    run.save_metrics(result)
    run.close()
    return trainer, result
