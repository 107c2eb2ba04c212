"""Fit any registered field to a multi-view dataset: random ray batches, photometric MSE plus the
architecture's regulariser, Adam with exponential decay, an occupancy grid refreshed as it trains,
periodic test PSNR/SSIM, test renders and a turntable video. `FieldTrainer` is a `Trainable`, so
`scene3d.train.fit` gives every run its checkpoints and exact resume (field, optimizer, occupancy grid,
RNG states and step)."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import imageio.v3 as iio
import torch
import tyro
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from scene3d.cameras import Cameras, turntable_cameras
from scene3d.config import Choice, Range, check
from scene3d.data.dataset import MultiViewDataset, make_multiview_dataset
from scene3d.data.formats import load_dataset
from scene3d.data.frame import write_frame
from scene3d.data.synthetic import WorldConfig, make_world
from scene3d.device import pick_device
from scene3d.errors import CheckpointError, DataError
from scene3d.fields.base import FIELDS, Field, build_field, field_spec, load_field_state
from scene3d.metrics import psnr, ssim
from scene3d.rays import Rays
from scene3d.render import OccupancyGrid, OccupancyGridConfig, render_image, render_rays
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import FitResult, RunConfig, fit
from scene3d.viz import depth_to_grey, to_uint8, write_video


@dataclass
class FitConfig:
    """Fitting one field. `data`: a Blender / nerfstudio folder, or None for the synthetic demo
    world. Runs go to `<output_root>/fields/<name>/` (name: the field's) and resume from their latest
    checkpoint."""

    field: Annotated[str, Choice(FIELDS)] = "hashgrid"
    preset: Literal["default", "paper"] = "default"
    head: Literal["native", "pvd"] = "native"  # "pvd": PVD's shared interface and decoders (fields.shared_head)
    data: Path | None = None
    normalize: Literal["auto", "none"] = "auto"  # "auto": captures without an aabb normalised as nerfstudio's
    steps: Annotated[int, Range(1)] = 2000
    batch_rays: Annotated[int, Range(1)] = 1024
    n_samples: Annotated[int, Range(1, 4096)] = 64
    lr_final_ratio: Annotated[float | None, Range(0, above=True)] = None  # None: the architecture's own
    use_occupancy: bool = True
    occupancy: OccupancyGridConfig = dataclasses.field(default_factory=OccupancyGridConfig)
    random_background: bool = False
    eval_views: Annotated[int, Range(1)] = 4  # test views of the periodic evaluation (the final one uses all)
    turntable_frames: Annotated[int, Range(0)] = 24
    seed: int = 0
    device: str = "auto"
    # The synthetic world when `data` is None (views per split, image size).
    world_seed: int = 0
    n_train_views: Annotated[int, Range(1)] = 40
    n_test_views: Annotated[int, Range(1)] = 8
    image_size: Annotated[int, Range(1, 4096)] = 64
    # --name, --output-root, --eval-every, --checkpoint-every, --resume, ... (scene3d.train.RunConfig)
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = dataclasses.field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check(self)

    @property
    def run_name(self) -> str:
        return self.run.name or f"{self.field}"


class FieldTrainer:
    """Owns the field, optimizer, occupancy grid and RNG; a `scene3d.train.Trainable`."""

    def __init__(self, config: FitConfig, train: MultiViewDataset, test: MultiViewDataset | None = None,
                 field: Field | None = None):
        self.config = config
        self.name = f"fit {config.field}"
        self.device = pick_device(config.device)
        self.train_data, self.test_data = train, test
        aabb = tuple(train.aabb.flatten().tolist())
        self.field = (field or build_field(config.field, config.preset, aabb=aabb, head=config.head)).to(self.device)
        self.lr_final_ratio = (self.field.config.lr_final_ratio if config.lr_final_ratio is None
                               else config.lr_final_ratio)
        grid = dataclasses.replace(config.occupancy, render_samples=config.n_samples)
        self.occupancy = (OccupancyGrid(self.field.aabb, grid).to(self.device)
                          if config.use_occupancy else None)
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        rays = train.cameras.rays().flatten()
        if not (torch.isfinite(rays.origins).all() and torch.isfinite(rays.dirs).all()):  # NaN rays hit nothing:
            raise DataError(None, "cameras", "training rays are not finite in float32 (intrinsics or poses overflow)")
        self.origins, self.dirs = rays.origins.to(self.device), rays.dirs.to(self.device)
        self.targets = rearrange(train.images, "n h w c -> (n h w) c").to(self.device)
        self.masks = (rearrange(train.masks, "n h w -> (n h w)").to(self.device).float()
                      if train.masks is not None else None)
        self.background = train.background.to(self.device).float()
        self.optimizer = self._make_optimizer()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        groups = [{**g, "base_lr": g["lr"]} for g in self.field.param_groups()]
        return torch.optim.Adam(groups, betas=(0.9, 0.99))

    def _set_learning_rate(self, done: int) -> None:
        decay = self.lr_final_ratio ** min(done / max(self.config.steps, 1), 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * decay

    # the Trainable protocol ------------------------------------------------------------------------
    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        """Step `step` on a random batch of training rays: photometric MSE plus the regulariser."""
        c, done = self.config, step - 1
        self.field.train()
        if self.field.on_train_step(done):
            self.optimizer = self._make_optimizer()
        if self.occupancy is not None and done % c.occupancy.update_every == 0:
            self.occupancy.update(self.field.density, done, self.generator)
        self._set_learning_rate(done)
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
        return loss, {"loss": loss.item(), "train_psnr": -10 * math.log10(max(mse.item(), 1e-10))}

    def guarded_parameters(self):
        return self.field.named_parameters()

    def apply(self, step: int) -> dict[str, float]:
        self.optimizer.step()
        return {}

    def validate(self) -> dict[str, float]:
        return self.evaluate(self.config.eval_views)[0]

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        """Test metrics on every test view; with a run folder, the data's frame (dataparser_transforms.json),
        renders and the turntable video."""
        metrics, out = self.evaluate()
        if run is not None:
            write_frame(run.file("dataparser_transforms.json"), self.train_data.frame)
            save_test_renders(run, out, self.test_data.images)
            if self.config.turntable_frames:
                save_turntable(self, run, self.config.turntable_frames)
        result = {"field": self.config.field, "params": self.field.parameter_count(), **metrics}
        if self.occupancy is not None:
            result["occupied_fraction"] = self.occupancy.occupied_fraction
        return result

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
        """Restore a `state_dict()` exactly, including a resized TensoRF grid."""
        try:
            load_field_state(self.field, state["field"], path)
            self.optimizer = self._make_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
            if self.occupancy is not None:
                self.occupancy.load_state_dict(state["occupancy"])
            self.generator.set_state(state["rng"]["generator"])
            torch.set_rng_state(state["rng"]["torch"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(path, "trainer state", f"cannot resume ({err})") from None


def mean_over_views(metric, pred: Float[Tensor, "N H W 3"], target: Float[Tensor, "N H W 3"]) -> float:
    """A per-image metric averaged over views (the usual way test PSNR is reported)."""
    return float(torch.stack([metric(p, t) for p, t in zip(pred, target, strict=True)]).mean())


# outputs ------------------------------------------------------------------------------------------
def save_test_renders(run: RunDir, out: dict[str, Tensor], targets: Float[Tensor, "N H W 3"]) -> list[Path]:
    """PNG per test view: ground truth | prediction | depth."""
    paths = []
    for i in range(len(targets)):
        row = torch.cat([targets[i].cpu(), out["rgb"][i].cpu(), depth_to_grey(out["depth"][i].cpu())], dim=1)
        path = run.file("renders", f"test_{i:03d}.png")
        iio.imwrite(path, to_uint8(row))
        paths.append(path)
    return paths


def save_turntable(trainer: FieldTrainer, run: RunDir, n_frames: int) -> Path:
    """`turntable.mp4`: an orbit at the training cameras' distance and elevation around the box."""
    cams = turntable_cameras(trainer.train_data.cameras, trainer.field.aabb.cpu().mean(dim=0), n_frames)
    return write_video(run.file("turntable.mp4"), trainer.render(cams)["rgb"])


def load_data(config: FitConfig) -> tuple[MultiViewDataset, MultiViewDataset]:
    """(train, test) splits: from `config.data`, or rendered from the synthetic world."""
    if config.data is not None:
        return (load_dataset(config.data, "train", normalize=config.normalize),
                load_dataset(config.data, "test", normalize=config.normalize))
    world = make_world(config.world_seed, WorldConfig())
    splits = make_multiview_dataset(world, n_train=config.n_train_views, n_val=0, n_test=config.n_test_views,
                                    width=config.image_size, height=config.image_size, seed=config.world_seed)
    return splits["train"], splits["test"]


# the run ------------------------------------------------------------------------------------------
def fit_field(config: FitConfig, train: MultiViewDataset, test: MultiViewDataset, run: RunDir | None = None,
              field: Field | None = None) -> tuple[FieldTrainer, dict[str, Any]]:
    """Train to `config.steps` in `<output_root>/fields/<name>/` (resuming its latest checkpoint when
    `config.run.resume`), evaluate, write renders, a turntable video and metrics. Returns the trainer
    and the final metrics (empty when a limit ended the invocation early)."""
    run = run or config.run.open("fields", config.field)
    torch.manual_seed(config.seed)  # the field's initialisation: same seed, same run (a resume restores the RNG)
    trainer = FieldTrainer(config, train, test, field)
    result = fit(trainer, run, config.run, config.steps, job_config=config)
    return trainer, result.metrics
