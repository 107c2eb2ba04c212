"""Beyond the papers: a 3D Gaussian scene as the teacher of a radiance field, through its renders only.

A Gaussian scene has no embedding and no density at a field's sample points, so only PVD's rendered
level applies: each epoch the scene is rasterized (no gradients) from virtual cameras on the shell
band, and batches of their pixels, composited over one random background per ray, supervise the
student's volume renders over the same backgrounds.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.distill.volume.active import Shell
from scene3d.fields.base import Field, field_spec, load_field_state
from scene3d.gaussians import GaussianScene
from scene3d.gaussians.rasterize import rasterize
from scene3d.rays import Rays
from scene3d.render import render_rays
from scene3d.runs import RunDir
from scene3d.train import FitResult


@torch.no_grad()
def gaussian_views(scene: GaussianScene, cameras: Cameras) -> tuple[Float[Tensor, "N H W C"], Float[Tensor, "N H W"]]:
    """The scene's colour over a zero background (so any background can be added) and its opacity."""
    out = rasterize(scene, cameras, background=0.0)
    return out.colors, out.alpha


class GaussianToFieldDistiller:
    """Distil a Gaussian scene into `student` (any field) with the rendered-RGB loss; a
    `scene3d.train.Trainable` (in memory: `fit(distiller, None, RunConfig(), steps)` or a `Stepper`)."""

    def __init__(self, scene: GaussianScene, student: Field, shell: Shell, batch_rays: int = 1024,
                 n_samples: int = 64, epoch_views: int = 32, epoch_steps: int = 50, steps: int = 2000,
                 lr_final_ratio: float = 0.1, seed: int = 0):
        self.name = "distil splats -> field"
        self.scene, self.student, self.shell = scene.eval(), student, shell
        self.batch_rays, self.n_samples, self.steps, self.lr_final_ratio = batch_rays, n_samples, steps, lr_final_ratio
        self.epoch_views, self.epoch_steps = epoch_views, epoch_steps
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = self._make_optimizer()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([{**g, "base_lr": g["lr"]} for g in self.student.param_groups()], betas=(0.9, 0.99))

    def _new_epoch(self) -> None:
        self._set_epoch(self.shell.sample(self.epoch_views, self.generator))

    def _set_epoch(self, cameras: Cameras) -> None:
        """The epoch's training rays: the scene rasterized (no RNG) from `cameras`."""
        self.epoch_cameras = cameras
        colors, alpha = gaussian_views(self.scene, cameras)
        rays = cameras.rays()
        self.origins, self.dirs = rays.origins.reshape(-1, 3), rays.dirs.reshape(-1, 3)
        self.colors, self.alpha = rearrange(colors, "n h w c -> (n h w) c"), alpha.reshape(-1)

    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        done = step - 1
        if done % self.epoch_steps == 0:
            self._new_epoch()
        if self.student.on_train_step(done):
            self.optimizer = self._make_optimizer()
        decay = self.lr_final_ratio ** min(done / max(self.steps, 1), 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * decay
        idx = torch.randint(0, len(self.origins), (self.batch_rays,), generator=self.generator)
        n = len(idx)
        rays = Rays(self.origins[idx], self.dirs[idx], torch.zeros(n), torch.full((n,), 1e10))
        background = torch.rand(n, self.colors.shape[-1], generator=self.generator)
        target = self.colors[idx] + (1 - self.alpha[idx, None]) * background
        out = render_rays(self.student.train(), rays, self.n_samples, perturb=True, background=background,
                          generator=self.generator)
        mse = (out["rgb"] - target).square().mean()
        loss = mse + self.student.regularization()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, {"loss": loss.item(), "psnr_vs_teacher": -10 * math.log10(max(mse.item(), 1e-10))}

    def guarded_parameters(self):
        return self.student.named_parameters()

    def apply(self, step: int) -> dict[str, float]:
        self.optimizer.step()
        return {}

    def validate(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        """Student, optimizer, the epoch's cameras (its rays are re-rendered from them) and the RNGs."""
        cams = self.epoch_cameras
        return {"field": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": {"c2w": cams.c2w, "K": cams.K},
                "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}}

    def load_state_dict(self, state: dict) -> None:
        load_field_state(self.student, state["field"])
        self._set_epoch(Cameras(state["epoch"]["c2w"], state["epoch"]["K"], self.shell.width, self.shell.height))
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])

    def checkpoint_config(self) -> dict:
        return field_spec(self.student)

    def finish(self, run: RunDir | None, result: FitResult) -> dict:
        return {"student": self.student.name, "params": self.student.parameter_count()}
