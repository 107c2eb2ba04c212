"""Beyond the papers: a trained radiance field (any architecture) as the teacher of a 3D Gaussian scene,
through rendered supervision only (never ground truth).

Each epoch the teacher is volume-rendered (no gradients) from virtual cameras drawn on the `Shell`
band: colour over a zero background and accumulated opacity, so one random background per view can
be composited identically for the teacher's target and the student's rasterization. The student is
fitted with the 3DGS loss ((1 - 0.2) L1 + 0.2 D-SSIM) and adaptive density control, both reused from
`scene3d.gaussians.train` / `strategy`. The Gaussians start at the teacher's surface: pixels of
opaque teacher rays are unprojected at their expected depth, coloured by the teacher's colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.config import Range
from scene3d.distill.volume.active import Shell
from scene3d.distill.volume.distiller import EvalViews, teacher_occupancy
from scene3d.errors import CheckpointError
from scene3d.fields.base import Field
from scene3d.gaussians.ply import write_ply
from scene3d.gaussians.rasterize import rasterize
from scene3d.gaussians.scene import GaussianScene
from scene3d.gaussians.strategy import DensifyStrategy, DensityController
from scene3d.gaussians.train import loss_fn, make_optimizer, scene_extent, set_means_lr
from scene3d.render import OccupancyGrid, OccupancyGridConfig, render_image
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import FitResult
from scene3d.viz import image_grid, save_png


def _cpu_densify() -> DensifyStrategy:
    return DensifyStrategy(refine_start=100, refine_stop=1500, refine_every=100, reset_every=10**9)


@dataclass
class GaussianStudentOptions:
    """The Gaussian student's own options. batch_cameras: virtual views per step; n_init /
    init_min_opacity: initial Gaussians, seeded on teacher rays more opaque than this. The rest (SH
    schedule, D-SSIM weight, means decay, densification without opacity resets as for short runs)
    follows `scene3d.gaussians.train.FitConfig`; small CPU defaults."""

    batch_cameras: Annotated[int, Range(1)] = 1
    n_init: Annotated[int, Range(1)] = 5000
    init_min_opacity: Annotated[float, Range(0, 1)] = 0.5
    init_opacity: Annotated[float, Range(0, 1, above=True)] = 0.1
    sh_degree: Annotated[int, Range(0, 3)] = 3
    sh_increase_every: Annotated[int, Range(1)] = 500
    lambda_dssim: Annotated[float, Range(0, 1)] = 0.2
    means_lr_final_factor: Annotated[float, Range(0, above=True)] = 0.01
    densify: DensifyStrategy = field(default_factory=_cpu_densify)


@dataclass
class GaussianStudentConfig(GaussianStudentOptions):
    """steps: optimisation steps; epoch_views / epoch_steps: teacher views rendered per epoch and steps
    per epoch; n_samples: teacher samples per ray; use_occupancy: skip the teacher's empty space with
    an occupancy grid measured on it."""

    steps: int = 2000
    epoch_views: int = 32
    epoch_steps: int = 50
    n_samples: int = 64
    use_occupancy: bool = True
    occupancy: OccupancyGridConfig = field(default_factory=OccupancyGridConfig)
    seed: int = 0


@torch.no_grad()
def teacher_renders(teacher: Field, cameras: Cameras, n_samples: int, occupancy: OccupancyGrid | None = None
                    ) -> dict[str, Tensor]:
    """The teacher from `cameras` over a zero background: rgb [N,H,W,C] (premultiplied by opacity),
    accumulation [N,H,W] and depth [N,H,W] (camera z, sum of weights x z: divide by accumulation)."""
    teacher.eval()
    out = render_image(teacher, cameras, n_samples, background=None, occupancy=occupancy)
    return {k: out[k] for k in ("rgb", "accumulation", "depth")}


def surface_points(cameras: Cameras, renders: dict[str, Tensor], n: int, min_opacity: float,
                   generator: torch.Generator | None = None) -> tuple[Float[Tensor, "P 3"], Float[Tensor, "P C"]]:
    """Up to `n` points (drawn with replacement) unprojected at the expected depth of pixels whose
    accumulation exceeds `min_opacity`, with the teacher's unpremultiplied colour (rgb / accumulation)."""
    acc = renders["accumulation"]
    views, height, width = acc.shape
    valid = torch.nonzero(acc.reshape(-1) > min_opacity).squeeze(1)
    if len(valid) == 0:
        raise ValueError(f"no teacher ray is more opaque than {min_opacity}: nothing to seed Gaussians on")
    pick = valid[torch.randint(len(valid), (n,), generator=generator)]
    view, pix = pick // (height * width), pick % (height * width)
    uv = torch.stack([pix % width, pix // width], -1).float() + 0.5
    opacity = acc.reshape(views, -1)[view, pix]
    depth = renders["depth"].reshape(views, -1)[view, pix] / opacity
    points = cameras.to(acc.device)[view].unproject(uv[:, None, :], depth[:, None])[:, 0]
    colors = rearrange(renders["rgb"], "v h w c -> v (h w) c")[view, pix] / opacity[:, None]
    return points, colors.clamp(0, 1)


class FieldToGaussianDistiller:
    """Distil a field `teacher` into a `GaussianScene` (the student) through the teacher's renders on
    `shell`; `views` (optional) are the test views of `evaluate`. A `scene3d.train.Trainable`."""

    def __init__(self, config: GaussianStudentConfig, teacher: Field, shell: Shell, views: EvalViews | None = None):
        self.config, self.shell, self.views = config, shell, views
        self.teacher = teacher.eval().requires_grad_(False)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.name = f"distil {teacher.name} -> splats"
        self.eval_views: int | None = None  # views of the periodic validation (None: all)
        self.checkpoint_extra: dict[str, Any] = {}
        with torch.random.fork_rng(devices=[]):  # the global RNG that densification's splits draw from, kept apart
            torch.manual_seed(config.seed)
            self.split_rng = torch.get_rng_state()
        self.occupancy = (teacher_occupancy(self.teacher, config.occupancy, self.generator)
                          if config.use_occupancy else None)
        self._new_epoch()
        init = surface_points(self.epoch_cameras, self.epoch, config.n_init, config.init_min_opacity,
                              self.generator)
        scene = GaussianScene.from_points(*init, sh_degree=config.sh_degree, opacity=config.init_opacity)
        self._build(scene, scene_extent(self.epoch_cameras))
        if views is not None and views.teacher_rgb is None:
            views.teacher_rgb = self._teacher_rgb(views).clamp(0, 1)

    def _build(self, scene: GaussianScene, extent: float) -> None:
        self.scene, self.extent = scene, extent
        self.optimizer = make_optimizer(scene, extent)
        self.density = DensityController(self.config.densify, scene, self.optimizer, extent)
        self.means_lr = scene.param_groups(scene_extent=extent)[0]["lr"]

    def _teacher_rgb(self, views: EvalViews) -> Float[Tensor, "N H W C"]:
        out = teacher_renders(self.teacher, views.cameras, self.config.n_samples, self.occupancy)
        return out["rgb"] + (1 - out["accumulation"][..., None]) * views.background

    def _new_epoch(self) -> None:
        self.epoch_cameras = self.shell.sample(self.config.epoch_views, self.generator)
        self.epoch = teacher_renders(self.teacher, self.epoch_cameras, self.config.n_samples, self.occupancy)

    # the Trainable protocol -----------------------------------------------------------------------
    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        """Step `step`: the 3DGS loss on `batch_cameras` of the epoch's views, each over its own random
        background."""
        cfg = self.config
        if step > 1 and (step - 1) % cfg.epoch_steps == 0:
            self._new_epoch()
        set_means_lr(self.optimizer, step, cfg.steps, self.means_lr, cfg.means_lr_final_factor)
        idx = torch.randint(cfg.epoch_views, (cfg.batch_cameras,), generator=self.generator)
        background = torch.rand(len(idx), self.scene.channels, generator=self.generator)  # [B,C]
        target = self.epoch["rgb"][idx] + (1 - self.epoch["accumulation"][idx, ..., None]) * background[:, None, None]
        degree = min(self.scene.sh_degree, (step - 1) // cfg.sh_increase_every)
        out = rasterize(self.scene, self.epoch_cameras[idx], background=background, sh_degree=degree)
        loss = loss_fn(out.colors, target, cfg.lambda_dssim)
        self.optimizer.zero_grad(set_to_none=True)
        self.density.before_backward(out)
        self._out = out
        mse = (out.colors.detach() - target).square().mean().item()
        return loss, {"loss": loss.item(), "psnr_vs_teacher": -10 * math.log10(max(mse, 1e-10)),
                      "num_gaussians": float(len(self.scene))}

    def guarded_parameters(self):
        return self.scene.params.items()

    def apply(self, step: int) -> dict[str, float]:
        """The optimizer step, then densification (its splits draw from their own RNG state)."""
        self.optimizer.step()
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.split_rng)
            changed = self.density.after_backward(step, self._out)
            self.split_rng = torch.get_rng_state()
        return {f"density/{k}": float(v) for k, v in changed.items()}

    def validate(self) -> dict[str, float]:
        return self.evaluate(self.eval_views)[0] if self.views is not None else {}

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        """Metrics on every evaluation view; with a run folder, `renders/test_grid.png` (rows: ground
        truth when known, teacher, student) and `scene.ply`."""
        metrics, pred = self.evaluate() if self.views is not None else ({}, None)
        if run is not None:
            if pred is not None:
                k, views = min(4, len(pred)), self.views
                rows = [] if views.ground_truth is None else [list(views.ground_truth[:k].float())]
                save_png(run.file("renders", "test_grid.png"),
                         image_grid([*rows, list(views.teacher_rgb[:k]), list(pred[:k])]))
            write_ply(run.file("scene.ply"), self.scene)
        return {"teacher": self.teacher.name, "student": "splats", "num_gaussians": len(self.scene), **metrics}

    @torch.no_grad()
    def evaluate(self, n_views: int | None = None) -> tuple[dict[str, float], Float[Tensor, "N H W C"]]:
        """Test PSNR / SSIM of the student's renders against the teacher's and (when known) the ground truth."""
        views = self.views
        if views is None:
            raise ValueError("the distiller was built without evaluation views")
        n = len(views.cameras) if n_views is None else min(n_views, len(views.cameras))
        pred = rasterize(self.scene, views.cameras[:n], background=views.background).colors.clamp(0, 1)
        return views.compare(pred), pred

    # state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Scene, optimizer, densification statistics, the epoch's cameras and teacher renders, RNG."""
        cams = self.epoch_cameras
        return {"scene": {k: v.detach() for k, v in self.scene.params.items()},
                "optimizer": self.optimizer.state_dict(), "density": self.density.state_dict(),
                "extent": self.extent, "epoch": {"c2w": cams.c2w, "K": cams.K, **self.epoch},
                "rng": {"generator": self.generator.get_state(), "split": self.split_rng}}

    def checkpoint_config(self) -> dict[str, Any]:
        return {**self.checkpoint_extra, "splats": config_to_dict(self.config), "shell": config_to_dict(self.shell)}

    def load_state_dict(self, state: dict[str, Any], path=None) -> None:
        """Restore `state_dict()` exactly (the next steps match an uninterrupted run)."""
        try:
            self._build(GaussianScene(**state["scene"]), float(state["extent"]))
            self.optimizer.load_state_dict(state["optimizer"])
            self.density.load_state_dict(state["density"])
            epoch = state["epoch"]
            self.epoch_cameras = Cameras(epoch["c2w"], epoch["K"], self.shell.width, self.shell.height)
            self.epoch = {k: epoch[k] for k in ("rgb", "accumulation", "depth")}
            self.generator.set_state(state["rng"]["generator"])
            self.split_rng = state["rng"]["split"]
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(path, "splat distiller state", f"cannot resume ({err})") from None
