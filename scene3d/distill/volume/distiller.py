"""Progressive volume distillation (PVD, Fang et al. AAAI 2023) and its active-learning successor
(PVD-AL, Fang et al. 2023): convert any trained radiance field into any other architecture.

Supervision comes only from the teacher. Each epoch draws virtual cameras on a shell band covering
the training cameras; rays from them are rendered through the teacher and the student at the same
stratified samples (the teacher under no_grad) over the same background, and the student learns
three levels at once or in stages:

    feature    ||f_s(x) - f_t(x)||      f: PVD's 16-d interface (clipped log density, 15 geometry
                                        values; `fields.shared_head`), or with feature_level="adapter"
                                        the architectures' own embeddings through a learned linear map
    decoded    ||log-density residual|| (clipped to [-2, 7]) + ||colour residual||
    rendered   ||rendered RGB residual||

Each level is the L2 norm of its residuals over the batch (the authors' "normL2"), weighted 0.002
for the point levels and 1 for the rendered one, as in their code. The student starts with its
teacher's shared decoders (`inherit`: the authors load the teacher's checkpoint into the student,
non-strictly); the feature level needs both interfaces, so a pair with the grid (Plenoxels, which
has none) skips it, as the authors' code does.

PVD's staged schedule trains the feature level alone, then adds the decoded level, then the rendered
one; PVD-AL trains all at once. Both decay the feature weight by 0.995 per step (the authors' code).
Active learning (`volume.active`) picks cameras, rays and points.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import imageio.v3 as iio
import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from scene3d.cameras import Cameras
from scene3d.config import Ordered, Range, check
from scene3d.device import pick_device
from scene3d.distill.volume.active import (
    HardPosePool,
    HardRayPool,
    Shell,
    ViewErrors,
    parse_active,
    top_samples,
)
from scene3d.errors import CheckpointError, ConfigError
from scene3d.fields.base import FIELDS, Field, build_field, field_spec, load_field_state, save_field
from scene3d.fields.shared_head import inherit_decoders
from scene3d.metrics import psnr, ssim
from scene3d.rays import Rays
from scene3d.render import OccupancyGrid, OccupancyGridConfig, render_image, render_rays
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import FitResult
from scene3d.viz import depth_to_grey, to_uint8

DENSITY_RANGE = (-2.0, 7.0)
AUTHORS_STEPS = 30000         # the authors' run length, against which the pools are scaled
AUTHORS_POSES_PER_EPOCH = 345  # virtual poses per epoch of the authors' Synthetic-NeRF setting


@dataclass
class LevelWeights:
    """Loss weights of the three levels (the decoded level has a density and a colour term): the PVD
    authors' rates for their L2-norm losses. Each norm's gradient has unit length whatever the number
    of points and the size of the error, so under Adam the weights only set the levels' balance: the
    point levels guide (0.002) while the rendered level is on, and drive alone before it is."""

    feature: float = 0.002
    density: float = 0.002
    color: float = 0.002
    rgb: float = 1.0


@dataclass
class VolumeDistillConfig:
    """One teacher -> student conversion.

    schedule: "staged" (PVD: feature level only until stage_fractions[0] of the steps, then + decoded
    level until stage_fractions[1], then + rendered RGB; a pair without a feature level starts at the
    second stage) or "all_at_once" (PVD-AL).
    feature_level: "interface" (PVD's shared 16-d feature; the student takes the teacher's head) or
    "adapter" (ablation: each architecture keeps its own decoder, and a learned linear map links the
    student's embedding to the teacher's).
    inherit: start the student's shared decoders from the teacher's (False: the ablation from scratch).
    active: comma-separated active-learning levels among image (hard poses), ray (hard-ray pool), point.
    camera_fraction / ray_fraction / point_fraction: the authors' 10% hard poses, 10% hard rays and
    top-30% samples; opacity_threshold: rays below it give no point-level samples (0.5).
    hard_pose_pool / ray_pool: pool capacities; None scales the authors' (100 poses at 345 poses per
    epoch; 150 batches of rays over 30k steps) to this run's epoch size and length.
    hard_pose_start_epoch / hard_pose_jitter_deg: hard poses from epoch 4 on, jittered by up to
    pi/20 (9 degrees) per axis.
    density_clamp: the student's density pre-activation range (PVD's [-2, 7]); None leaves it free.
    random_background: one random colour per ray behind both renders (the student must then match
    the teacher's opacity even where the teacher's own white-background training left it undefined);
    False (default): the evaluation views' background behind both (white without views), i.e. the
    background the teacher was fitted over.
    use_occupancy: an occupancy grid measured once on the teacher skips empty space for both fields
    (the authors' student inherits the teacher's density bitfield).
    epoch_views / epoch_steps: virtual cameras drawn per epoch and steps per epoch.
    student_lr: the student's base learning rate (None: its architecture's own).
    """

    student: str = "tensorf"
    preset: Literal["default", "paper"] = "default"
    steps: Annotated[int, Range(1)] = 2000
    batch_rays: Annotated[int, Range(1)] = 1024
    n_samples: Annotated[int, Range(1, 4096)] = 64
    schedule: Literal["staged", "all_at_once"] = "all_at_once"
    stage_fractions: Annotated[tuple[float, float], Range(0, 1), Ordered()] = (2000 / 30000, 5000 / 30000)  # 30k
    feature_level: Literal["interface", "adapter"] = "interface"
    inherit: bool = True
    weights: LevelWeights = dataclasses.field(default_factory=LevelWeights)
    feature_decay: Annotated[float, Range(0, 1)] = 0.995
    active: str = "image,ray,point"
    camera_fraction: Annotated[float, Range(0, 1, above=True)] = 0.1
    hard_pose_pool: Annotated[int | None, Range(1)] = None
    hard_pose_start_epoch: Annotated[int, Range(0)] = 3
    hard_pose_jitter_deg: Annotated[float, Range(0)] = 9.0
    ray_fraction: Annotated[float, Range(0, 1)] = 0.1
    ray_pool: Annotated[int | None, Range(1)] = None
    point_fraction: Annotated[float, Range(0, 1)] = 0.3
    opacity_threshold: Annotated[float, Range(0, 1)] = 0.5
    density_clamp: Annotated[tuple[float, float] | None, Ordered()] = DENSITY_RANGE
    random_background: bool = False
    use_occupancy: bool = True
    occupancy: OccupancyGridConfig = dataclasses.field(default_factory=OccupancyGridConfig)
    epoch_views: Annotated[int, Range(1)] = 32
    epoch_steps: Annotated[int, Range(1)] = 50
    student_lr: Annotated[float | None, Range(0, above=True)] = None
    lr_final_ratio: Annotated[float, Range(0, above=True)] = 0.1
    adapter_lr: Annotated[float, Range(0, above=True)] = 1e-2
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check(self)
        if self.student not in self.students():
            raise ConfigError("--student", f"must be one of {', '.join(self.students())}; got {self.student!r}")
        try:
            parse_active(self.active)
        except ValueError as err:
            raise ConfigError("--active", str(err)) from None

    def students(self) -> list[str]:
        """The student names this config accepts: the registered fields."""
        return sorted(FIELDS)

    def hard_pose_capacity(self) -> int:
        """The image-level pool's capacity: the authors' 100 poses scaled by our poses per epoch."""
        return self.hard_pose_pool or max(1, round(100 * self.epoch_views / AUTHORS_POSES_PER_EPOCH))

    def ray_pool_capacity(self) -> int:
        """The ray pool's capacity: the authors' 150 batches over 30k steps, scaled to this run's
        length, so that it fills after the same 5% of the run."""
        n_hard = max(1, int(self.ray_fraction * self.batch_rays))
        return self.ray_pool or max(n_hard, round(150 * self.batch_rays * self.steps / AUTHORS_STEPS))


# losses -----------------------------------------------------------------------------------------
def clipped_log_density(sigma_preact: Tensor, bounds: tuple[float, float] = DENSITY_RANGE) -> Tensor:
    """The density pre-activation (the log-density of the truncated exp) clipped to PVD's range."""
    return sigma_preact.clamp(*bounds)


def l2_norm(residual: Tensor) -> Tensor:
    """A level's loss: the L2 norm of all its residuals (PVD's "normL2"; zero gradient at zero)."""
    return torch.linalg.vector_norm(residual)


def density_residual(student: Float[Tensor, " P"], teacher: Float[Tensor, " P"],
                     bounds: tuple[float, float] = DENSITY_RANGE) -> Float[Tensor, " P"]:
    """Per-point residual of log-densities, the teacher's clipped to `bounds`. The student's value is
    not clipped (so its gradient never vanishes) but agreeing beyond a bound costs nothing: a teacher
    at the floor only asks the student to be at or below it."""
    target = clipped_log_density(teacher, bounds)
    residual = student - target
    lo, hi = bounds
    free = ((target <= lo) & (student < lo)) | ((target >= hi) & (student > hi))
    return torch.where(free, torch.zeros_like(residual), residual)


def embedding_loss(student: Float[Tensor, "P Fs"], teacher: Float[Tensor, "P Ft"], adapter: EmbeddingAdapter
                   ) -> Tensor:
    """Norm of the adapted student embedding's residual relative to the teacher features' RMS
    (feature scales differ by architecture)."""
    rms = teacher.square().mean().clamp_min(1e-12).sqrt()
    return l2_norm(adapter(student, rms) - teacher) / rms


class Recorder:
    """Stands in for a field inside `render_rays`: `query` goes through embed / decode / activate and
    keeps the points and their embedding, interface (with `interface`, when the feature level reads
    it; else None), density pre-activation and colour of the last call."""

    def __init__(self, field: Field, interface: bool = False):
        self.field, self.aabb, self.config = field, field.aabb, field.config
        self.with_interface = interface
        self.record: dict[str, Tensor | None] = {}

    def query(self, x: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        features = self.field.embed(x)
        interface = self.field.interface(features) if self.with_interface else None
        preact, rgb = self.field.decode(features, dirs)
        self.record = {"points": x.reshape(-1, 3), "features": features.reshape(-1, features.shape[-1]),
                       "interface": None if interface is None else interface.reshape(-1, interface.shape[-1]),
                       "preact": preact.reshape(-1), "rgb": rgb.reshape(-1, rgb.shape[-1])}
        return self.field.activate(preact) * self.field.inside(x), rgb


def marched_samples(rays: Rays, t: Float[Tensor, "R S"], aabb: Tensor, occupancy: OccupancyGrid | None
                    ) -> Bool[Tensor, "R S"]:
    """The samples `render_rays` sent to the field: inside the box and, with a grid, in occupied cells."""
    _, hit = rays.clip_to_aabb(aabb)
    marched = hit[:, None].expand_as(t)
    return marched if occupancy is None else marched & occupancy.occupied(rays.at(t))


def teacher_occupancy(teacher: Field, config: OccupancyGridConfig, generator: torch.Generator | None = None,
                      passes: int = 4) -> OccupancyGrid:
    """An occupancy grid measured on the teacher (max density at `passes` random points per cell)."""
    grid = OccupancyGrid(teacher.aabb, config).to(teacher.aabb.device)
    with torch.no_grad():
        for _ in range(passes - 1):
            grid.update(teacher.density, 0, generator)
        grid.update(teacher.density, config.warmup_steps, generator)
    return grid


class EmbeddingAdapter(nn.Module):
    """Maps the student's embedding [P, F_s] into the teacher's [P, F_t]: the identity for the same
    architecture at the same width, else a learned linear map (zero at the start). The linear map
    predicts the teacher's features divided by their RMS, then rescaled, so its Adam steps do not
    depend on the teacher's feature scale (hash-grid features start near 1e-4)."""

    def __init__(self, width_s: int, width_t: int, identity: bool):
        super().__init__()
        self.linear = None if identity else nn.Linear(width_s, width_t)
        if self.linear is not None:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, features: Float[Tensor, "P Fs"], teacher_rms: Tensor) -> Float[Tensor, "P Ft"]:
        return features if self.linear is None else self.linear(features) * teacher_rms


def make_adapter(student: Field, teacher: Field) -> EmbeddingAdapter:
    """The adapter between two fields' embeddings (identity for equal architectures and widths)."""
    probe = teacher.aabb.mean(0, keepdim=True)
    with torch.no_grad():
        width_s, width_t = student.embed(probe).shape[-1], teacher.embed(probe).shape[-1]
    return EmbeddingAdapter(width_s, width_t, student.name == teacher.name and width_s == width_t).to(probe.device)


def student_for(teacher: Field, name: str, preset: str = "default",
                density_clamp: tuple[float, float] | None = DENSITY_RANGE, **overrides: Any) -> Field:
    """A fresh `name` field in the teacher's box with the teacher's colour channels and head; an MLP
    student under PVD's head takes the width of the teacher's code (so the teacher's sigma_net fits)."""
    overrides = {"aabb": tuple(teacher.config.aabb), "color_dim": teacher.config.color_dim,
                 "density_clamp": density_clamp, "head": teacher.config.head, **overrides}
    sigma_net = getattr(getattr(teacher, "head", None), "sigma_net", None)
    if sigma_net is not None and "code_dim" in {f.name for f in dataclasses.fields(FIELDS[name].Config)}:
        overrides.setdefault("code_dim", sigma_net[0].in_features)
    return build_field(name, preset, **overrides).to(teacher.aabb.device)


# the distiller ------------------------------------------------------------------------------------
@dataclass
class EvalViews:
    """Test cameras, the teacher's renders of them and (when known) ground-truth images."""

    cameras: Cameras
    background: Float[Tensor, " C"]
    teacher_rgb: Float[Tensor, "N H W C"] | None = None
    ground_truth: Float[Tensor, "N H W 3"] | None = None

    def compare(self, pred: Float[Tensor, "n H W C"]) -> dict[str, float]:
        """PSNR / SSIM of renders of the first n views against the teacher's and, when known,
        the ground truth (with the teacher's own test PSNR)."""
        n = len(pred)
        metrics = {"psnr_vs_teacher": mean_psnr(pred, self.teacher_rgb[:n]),
                   "ssim_vs_teacher": mean_ssim(pred, self.teacher_rgb[:n])}
        if self.ground_truth is not None:
            gt = self.ground_truth[:n].float()
            metrics |= {"test_psnr": mean_psnr(pred, gt), "test_ssim": mean_ssim(pred, gt),
                        "teacher_test_psnr": mean_psnr(self.teacher_rgb[:n], gt)}
        return metrics


def save_renders(run: RunDir, out: dict[str, Tensor], views: EvalViews) -> list[Path]:
    """PNG per test view: ground truth (when known) | teacher | student | student depth."""
    paths = []
    for i in range(len(out["rgb"])):
        parts = [] if views.ground_truth is None else [views.ground_truth[i].float()]
        parts += [views.teacher_rgb[i], out["rgb"][i].cpu(), depth_to_grey(out["depth"][i].cpu())]
        path = run.file("renders", f"test_{i:03d}.png")
        iio.imwrite(path, to_uint8(torch.cat(parts, dim=1)))
        paths.append(path)
    return paths


class VolumeDistiller:
    """Owns the student, the adapter, the optimizer, the pools and the RNGs; a `scene3d.train.Trainable`.
    `inherited` names the teacher tensors the student started from."""

    def __init__(self, config: VolumeDistillConfig, teacher: Field, shell: Shell, views: EvalViews | None = None,
                 student: Field | None = None):
        self.config = config
        self.device = pick_device(config.device)
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # the same seed gives the same student in any process
            torch.manual_seed(config.seed)
            adapter = config.feature_level == "adapter"
            overrides = {"head": "native"} if adapter else {}
            if config.student_lr is not None:
                overrides["lr"] = config.student_lr
            self.student = (student or student_for(teacher, config.student, config.preset,
                                                   config.density_clamp, **overrides)).to(self.device)
            self.adapter = (make_adapter(self.student, self.teacher) if adapter
                            else EmbeddingAdapter(0, 0, identity=True))
        self.inherited = inherit_decoders(self.student, self.teacher) if config.inherit else []
        self.name = f"distil {teacher.name} -> {config.student}"
        self.shell, self.active = shell, parse_active(config.active)
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        self.cpu_generator = torch.Generator().manual_seed(config.seed + 1)
        self.occupancy = (teacher_occupancy(self.teacher, config.occupancy, self.generator)
                          if config.use_occupancy else None)
        self.pose_pool = HardPosePool(config.camera_fraction, config.hard_pose_capacity(),
                                      config.hard_pose_start_epoch, math.radians(config.hard_pose_jitter_deg))
        self.ray_pool = HardRayPool(config.ray_pool_capacity())
        self._has_features = self.has_feature_level()
        self._set_epoch(torch.empty(0, 4, 4))
        self.optimizer = self._make_optimizer()
        self.views = views
        self.eval_views: int | None = None  # views of the periodic validation (None: all)
        self.checkpoint_extra: dict[str, Any] = {}
        self.background = (views.background.float().to(self.device) if views is not None
                           else torch.ones(teacher.config.color_dim, device=self.device))
        if views is not None and views.teacher_rgb is None:
            views.teacher_rgb = self._render(self.teacher, views)["rgb"].clamp(0, 1).cpu()

    # optimisation -------------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        groups = self.student.param_groups()
        adapter = list(self.adapter.parameters())
        if adapter:
            groups.append({"params": adapter, "lr": self.config.adapter_lr})
        return torch.optim.Adam([{**g, "base_lr": g["lr"]} for g in groups], betas=(0.9, 0.99))

    def _set_learning_rate(self, done: int) -> None:
        decay = self.config.lr_final_ratio ** min(done / max(self.config.steps, 1), 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * decay

    def has_feature_level(self) -> bool:
        """Whether the pair has a feature level: both interfaces (or the adapter ablation)."""
        if self.config.feature_level == "adapter":
            return True
        probe = self.teacher.aabb.mean(0, keepdim=True)
        with torch.no_grad():
            return all(f.interface(f.embed(probe)) is not None for f in (self.teacher, self.student))

    def level_weights(self, step: int) -> dict[str, float]:
        """The weight of each loss at `step` under the configured schedule (0 = level off). Without a
        feature level the staged schedule starts at its second stage (the authors' stage1 = -1)."""
        c, w = self.config, self.config.weights
        features = self._has_features
        stage = 2
        if c.schedule == "staged":
            stage = max(sum(step >= f * c.steps for f in c.stage_fractions), 0 if features else 1)
        return {"feature": w.feature * c.feature_decay**step if features else 0.0,
                "density": w.density if stage >= 1 else 0.0, "color": w.color if stage >= 1 else 0.0,
                "rgb": w.rgb if stage >= 2 else 0.0}

    # cameras and rays ------------------------------------------------------------------------------
    def _set_epoch(self, c2w: Float[Tensor, "N 4 4"]) -> None:
        """Make c2w the epoch's cameras (or draw fresh ones when empty) and precompute their rays."""
        if len(c2w) == 0:
            c2w = self.shell.sample(self.config.epoch_views, self.cpu_generator).c2w
        self.epoch_c2w = c2w.cpu()
        rays = self.shell.cameras(self.epoch_c2w).rays()
        self.epoch_origins = rays.origins.reshape(-1, 3).to(self.device)
        self.epoch_dirs = rays.dirs.reshape(-1, 3).to(self.device)
        self.pixels_per_view = self.shell.width * self.shell.height
        self.view_errors = ViewErrors(len(c2w), self.device)

    def _next_epoch(self, epoch: int) -> None:
        """Fresh cameras for epoch `epoch` (counted from 1); with the image level, hard poses among them."""
        fresh = self.shell.sample(self.config.epoch_views, self.cpu_generator).c2w
        if "image" in self.active:
            fresh = self.pose_pool.next_epoch(epoch, self.epoch_c2w, self.view_errors.psnr().cpu(), fresh,
                                              self.cpu_generator)
        self._set_epoch(fresh)

    def sample_rays(self) -> tuple[Rays, Tensor, Tensor | None]:
        """batch_rays random pixels of the epoch's cameras, plus (once the ray pool is full) a
        ray_fraction share more drawn from it; each ray's view index (-1 for pooled rays) and the
        pool slots drawn."""
        c = self.config
        idx = torch.randint(0, len(self.epoch_origins), (c.batch_rays,), generator=self.generator,
                            device=self.device)
        origins, dirs, view = self.epoch_origins[idx], self.epoch_dirs[idx], idx // self.pixels_per_view
        drawn = (self.ray_pool.draw(int(c.ray_fraction * c.batch_rays), self.generator)
                 if "ray" in self.active else None)
        if drawn is not None:
            origins = torch.cat([origins, self.ray_pool.origins[drawn]])
            dirs = torch.cat([dirs, self.ray_pool.dirs[drawn]])
            view = torch.cat([view, torch.full((len(drawn),), -1, device=self.device)])
        n = len(origins)
        rays = Rays(origins, dirs, torch.zeros(n, device=self.device), torch.full((n,), 1e10, device=self.device))
        return rays, view, drawn

    # one step ---------------------------------------------------------------------------------------
    def render_pair(self, rays: Rays) -> tuple[dict[str, Tensor], dict[str, Tensor], Recorder, Recorder]:
        """Render rays through the teacher (no_grad) and the student at the same jittered samples over
        the same background; returns both outputs and both per-point records."""
        channels = self.teacher.config.color_dim
        background = (torch.rand(len(rays), channels, generator=self.generator, device=self.device)
                      if self.config.random_background else self.background.expand(len(rays), channels))
        interface = self._has_features and self.config.feature_level == "interface"
        teacher, student = Recorder(self.teacher, interface), Recorder(self.student, interface)
        kwargs = {"perturb": True, "background": background, "occupancy": self.occupancy}
        state = self.generator.get_state()
        with torch.no_grad():
            out_t = render_rays(teacher, rays, self.config.n_samples, generator=self.generator, **kwargs)
        self.generator.set_state(state)
        out_s = render_rays(student, rays, self.config.n_samples, generator=self.generator, **kwargs)
        return out_t, out_s, teacher, student

    def losses(self, rays: Rays, out_t: dict[str, Tensor], out_s: dict[str, Tensor], teacher: Recorder,
               student: Recorder) -> dict[str, Tensor]:
        """The unweighted loss of every level; with the point level, the point losses are taken at the
        union of the teacher's and the student's top samples."""
        mask: Bool[Tensor, " P"] | None = None
        if "point" in self.active:
            c = self.config
            marched = marched_samples(rays, out_t["t"], self.teacher.aabb, self.occupancy)
            mask = (top_samples(out_t["weights"], out_t["accumulation"], marched, c.point_fraction,
                                c.opacity_threshold)
                    | top_samples(out_s["weights"].detach(), out_s["accumulation"].detach(), marched,
                                  c.point_fraction, c.opacity_threshold))
            mask = mask[marched] if self.occupancy is not None else mask.flatten()
        t, s = teacher.record, student.record

        def points(x: Tensor) -> Tensor:
            return x if mask is None else x[mask]

        out = {"rgb": l2_norm(out_s["rgb"] - out_t["rgb"])}
        zero = out["rgb"] * 0
        if len(points(t["preact"])) == 0:
            return {**out, "feature": zero, "density": zero, "color": zero}
        if not self._has_features:
            out["feature"] = zero
        elif self.config.feature_level == "adapter":
            out["feature"] = embedding_loss(points(s["features"]), points(t["features"]), self.adapter)
        else:
            out["feature"] = l2_norm(points(s["interface"]) - points(t["interface"]))
        bounds = self.config.density_clamp or DENSITY_RANGE
        out["density"] = l2_norm(density_residual(points(s["preact"]), points(t["preact"]), bounds))
        out["color"] = l2_norm(points(s["rgb"]) - points(t["rgb"]))
        return out

    # the Trainable protocol -----------------------------------------------------------------------
    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        """Step `step`: a batch of rays rendered by both fields, the weighted level losses."""
        c, done = self.config, step - 1
        self.student.train()
        if done > 0 and done % c.epoch_steps == 0:
            self._next_epoch(done // c.epoch_steps + 1)
        if self.student.on_train_step(done):
            self.optimizer = self._make_optimizer()
        self._set_learning_rate(done)
        rays, view, drawn = self.sample_rays()
        out_t, out_s, teacher, student = self.render_pair(rays)
        losses = self.losses(rays, out_t, out_s, teacher, student)
        weights = self.level_weights(done)
        loss = sum(weights[k] * losses[k] for k in weights) + self.student.regularization()
        self.optimizer.zero_grad(set_to_none=True)
        err = out_s["rgb"].detach() - out_t["rgb"]
        self._batch = (rays, view, err, drawn)  # what enters the pools once the step is applied
        mse = err.square().mean().item()
        return loss, {"loss": loss.item(), **{f"loss_{k}": v.item() for k, v in losses.items()},
                      "psnr_vs_teacher": -10 * math.log10(max(mse, 1e-10)),
                      **{f"weights/{k}": v for k, v in weights.items()}}

    def guarded_parameters(self) -> list[tuple[str, Tensor]]:
        return [*self.student.named_parameters(), *self.adapter.named_parameters("adapter")]

    def apply(self, step: int) -> dict[str, float]:
        """The optimizer step; the batch's errors enter the camera and ray pools."""
        self.optimizer.step()
        rays, view, err, drawn = self._batch
        with torch.no_grad():
            self.view_errors.add(view, err.square().mean(-1))
            if "ray" in self.active:
                self.ray_pool.update(rays.origins, rays.dirs, err.abs().sum(-1),
                                     int(self.config.ray_fraction * self.config.batch_rays), drawn)
        return {}

    def validate(self) -> dict[str, float]:
        return self.evaluate(self.eval_views)[0] if self.views is not None else {}

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        """Metrics on every evaluation view; with a run folder, renders and `student.safetensors`."""
        metrics, out = self.evaluate() if self.views is not None else ({}, None)
        if run is not None:
            if out is not None:
                save_renders(run, out, self.views)
            save_field(self.student, run.file("student.safetensors"))
        c = self.config
        return {"teacher": self.teacher.name, "student": c.student, "active": c.active, "schedule": c.schedule,
                "feature_level": c.feature_level if self._has_features else "none",
                "inherited_tensors": len(self.inherited), "params": self.student.parameter_count(), **metrics}

    # evaluation -----------------------------------------------------------------------------------
    def _render(self, field: Field, views: EvalViews) -> dict[str, Tensor]:
        field.eval()
        return render_image(field, views.cameras.to(self.device), self.config.n_samples,
                            background=views.background.to(self.device), occupancy=self.occupancy)

    def evaluate(self, n_views: int | None = None) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Test PSNR / SSIM of the student against the teacher's renders and the ground truth."""
        views = self.views
        if views is None:
            raise ValueError("the distiller was built without evaluation views")
        n = len(views.cameras) if n_views is None else min(n_views, len(views.cameras))
        sub = EvalViews(views.cameras[:n], views.background)
        out = self._render(self.student, sub)
        pred = out["rgb"].clamp(0, 1).cpu()
        return views.compare(pred), out

    # state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {"field": self.student.state_dict(), "adapter": self.adapter.state_dict(),
                 "optimizer": self.optimizer.state_dict(),
                 "pools": {"pose": self.pose_pool.state_dict(), "ray": self.ray_pool.state_dict()},
                 "epoch": {"c2w": self.epoch_c2w, "error_sum": self.view_errors.sum,
                           "error_count": self.view_errors.count},
                 "rng": {"generator": self.generator.get_state(), "cpu_generator": self.cpu_generator.get_state(),
                         "torch": torch.get_rng_state()}}
        if self.occupancy is not None:
            state["occupancy"] = self.occupancy.state_dict()
        return state

    def checkpoint_config(self) -> dict[str, Any]:
        """The student's field spec (so `load_field` reads the checkpoint), the distillation config and
        `checkpoint_extra` (a run's teacher path and its fit)."""
        return {**field_spec(self.student), "distill": config_to_dict(self.config),
                "shell": config_to_dict(self.shell), **self.checkpoint_extra}

    def load_state_dict(self, state: dict[str, Any], path=None) -> None:
        """Restore `state_dict()` exactly (student, adapter, optimizer, pools, epoch, RNG)."""
        try:
            load_field_state(self.student, state["field"], path)
            self.adapter.load_state_dict(state["adapter"])
            self.optimizer = self._make_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
            self.pose_pool.load_state_dict(state["pools"]["pose"])
            self.ray_pool.load_state_dict({k: v.to(self.device) for k, v in state["pools"]["ray"].items()})
            if self.occupancy is not None:
                self.occupancy.load_state_dict(state["occupancy"])
            self._set_epoch(state["epoch"]["c2w"])
            self.view_errors.sum.copy_(state["epoch"]["error_sum"])
            self.view_errors.count.copy_(state["epoch"]["error_count"])
            self.generator.set_state(state["rng"]["generator"])
            self.cpu_generator.set_state(state["rng"]["cpu_generator"])
            torch.set_rng_state(state["rng"]["torch"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(path, "distiller state", f"cannot resume ({err})") from None


def mean_psnr(pred: Float[Tensor, "N H W C"], target: Float[Tensor, "N H W C"]) -> float:
    return float(torch.stack([psnr(p, t) for p, t in zip(pred, target, strict=True)]).mean())


def mean_ssim(pred: Float[Tensor, "N H W C"], target: Float[Tensor, "N H W C"]) -> float:
    return float(torch.stack([ssim(p, t) for p, t in zip(pred, target, strict=True)]).mean())
