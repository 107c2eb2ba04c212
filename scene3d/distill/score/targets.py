"""3D students of score distillation, registered in `TARGETS` by name.

A student is trained through `Target(render, optimizer, ...)` by the distiller and seen through
`Student.render` (deterministic renders for evaluation) and `Student.export` (PLY / mesh files):

- `field`: any registered radiance field (`build_field(arch)`), volume-rendered with
  `scene3d.render.render_rays` over a white background, with a density blob added to its density
  pre-activation (DreamFusion / Magic3D's initialisation, so the first renders show an object);
  exported as a mesh (TSDF fusion of rendered RGB-D views, `scene3d.export`).
- `splats`: a `GaussianScene` initialised as a ball of Gaussians, rasterized with the torch backend
  (gsplat on CUDA), densified and pruned by `DensityController`, with Dreamer XL's pixel-wise
  clipping of the render gradients; exported as a standard 3DGS PLY.
- `voxels`: `VoxelTarget`, a minimal dense density + colour grid (a dependency-free 3D check).
- `image`: one learnable image seen identically from every camera (a 2D check of a guidance).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.cameras import Cameras
from scene3d.config import Choice, Range
from scene3d.distill.score.distiller import Target, image_target
from scene3d.distill.score.views import orbit_views
from scene3d.fields import FIELDS, Field, build_field
from scene3d.gaussians import GaussianScene, rasterize
from scene3d.gaussians.strategy import DensifyStrategy, DensityController
from scene3d.render import render_image, render_rays

WHITE = (1.0, 1.0, 1.0)


class VoxelTarget(nn.Module):
    """density = softplus(grid + blob), colour = sigmoid(grid); grid covers [-extent, extent]^3.

    The density blob (DreamFusion / threestudio's initialisation) starts a soft ball in the middle.
    """

    def __init__(self, resolution: int = 32, extent: float = 0.6, samples: int = 48, blob_density: float = 5.0,
                 blob_radius: float = 0.35, background: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        super().__init__()
        self.grid = nn.Parameter(torch.zeros(1, 4, resolution, resolution, resolution))
        self.extent, self.samples = extent, samples
        self.blob_density, self.blob_radius = blob_density, blob_radius
        self.register_buffer("background", torch.tensor(background), persistent=False)

    def query(self, points: Float[Tensor, "P 3"]) -> tuple[Tensor, Tensor]:
        """(sigma [P], rgb [P,3]) at world points; zero density outside the grid."""
        coords = rearrange(points / self.extent, "p c -> 1 1 1 p c")
        # grid_sample's last coordinate indexes W, so (x, y, z) -> (W, H, D) of a [D,H,W] grid.
        raw = rearrange(F.grid_sample(self.grid, coords, align_corners=True, padding_mode="border"),
                        "1 c 1 1 p -> p c")
        blob = self.blob_density * (1 - points.norm(dim=-1) / self.blob_radius)
        inside = (points.abs() <= self.extent).all(-1)
        sigma = F.softplus(raw[:, 0] + blob) * inside
        return sigma, torch.sigmoid(raw[:, 1:])

    def render(self, cameras: Cameras) -> Float[Tensor, "B 3 H W"]:
        rays = cameras.rays()
        o, d = rays.origins.reshape(-1, 3), rays.dirs.reshape(-1, 3)
        dist = cameras.centers.norm(dim=-1).repeat_interleave(cameras.height * cameras.width)
        r = self.extent * 3**0.5
        near, far = (dist - r).clamp_min(0.05), dist + r
        u = (torch.arange(self.samples, device=o.device) + 0.5) / self.samples
        if self.training:
            u = u + (torch.rand(len(o), self.samples, device=o.device) - 0.5) / self.samples
        t = near[:, None] + (far - near)[:, None] * u
        points = o[:, None] + t[..., None] * d[:, None]
        sigma, rgb = self.query(points.reshape(-1, 3))
        sigma, rgb = sigma.view(len(o), -1), rgb.view(len(o), -1, 3)
        delta = ((far - near) / self.samples)[:, None]
        alpha = 1 - torch.exp(-sigma * delta)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1] + 1e-10], 1), 1)
        weights = alpha * trans
        color = (weights[..., None] * rgb).sum(1) + (1 - weights.sum(1, keepdim=True)) * self.background
        return rearrange(color, "(n h w) c -> n c h w", n=len(cameras), h=cameras.height)


@dataclass
class Student:
    """A distillation student: what the distiller trains, how to look at it, how to export it."""

    target: Target
    render: Callable[[Cameras], Tensor]  # deterministic renders [B,3,H,W] in [0,1] for evaluation
    module: nn.Module
    export: Callable[[Path], dict[str, str | int]] | None = None  # writes files into a folder: paths, counts
    # deterministic (camera-z depth [B,H,W], alpha [B,H,W]) for the shape checks (geometry.shape_report)
    surface: Callable[[Cameras], tuple[Tensor, Tensor]] | None = None


# radiance fields -------------------------------------------------------------------------------------
# Small CPU settings per architecture (diffuse colour: view-dependent colour lets a field cheat the
# prior view by view). Anything else is the architecture's default.
FIELD_DEFAULTS: dict[str, dict] = {
    "grid": {"resolution": 32, "sh_degree": 0, "init_density": 0.0, "lr": 0.05},
    "hashgrid": {"log2_table_size": 14, "n_levels": 6, "finest_resolution": 64.0, "sh_degree": 0},
    "mlp": {"lr": 1e-3},
    "tensorf": {"resolution_init": 24, "resolution_final": 48, "upsample_steps": (200, 400)},
}


@dataclass
class FieldTargetConfig:
    """A registered field inside the box [-extent, extent]^3, `samples` stratified samples per ray.
    Density blob: blob_density * (1 - |x| / blob_radius) added to the density pre-activation."""

    arch: Annotated[str, Choice(FIELDS)] = "grid"
    extent: Annotated[float, Range(0, above=True)] = 0.6
    samples: Annotated[int, Range(1, 4096)] = 48
    blob_density: float = 5.0
    blob_radius: Annotated[float, Range(0, above=True)] = 0.35
    lr: Annotated[float | None, Range(0, above=True)] = None  # None: FIELD_DEFAULTS / the architecture's own
    regularize: bool = True  # add the architecture's own regulariser (TV, L1) to the loss
    mesh_views: Annotated[int, Range(1)] = 24
    mesh_size: Annotated[int, Range(1, 4096)] = 64
    mesh_voxel: Annotated[float, Range(0, above=True)] = 0.015


class BlobField(nn.Module):
    """A field whose density pre-activation gets a fixed blob around the origin. Implements what
    `render_rays` needs (`aabb`, `config`, `query`) plus `density`."""

    def __init__(self, field: Field, blob_density: float, blob_radius: float):
        super().__init__()
        self.field, self.blob_density, self.blob_radius = field, blob_density, blob_radius

    @property
    def aabb(self) -> Tensor:
        return self.field.aabb

    @property
    def config(self):
        return self.field.config

    def blob(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B"]:
        return self.blob_density * (1 - x.norm(dim=-1) / self.blob_radius)

    def query(self, x: Float[Tensor, "*B 3"], dirs: Float[Tensor, "*B 3"]) -> tuple[Tensor, Tensor]:
        preact, rgb = self.field.decode(self.field.embed(x), dirs)
        return self.field.activate(preact + self.blob(x)) * self.field.inside(x), rgb

    def density(self, x: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B"]:
        preact = self.field.decode_density(self.field.embed(x))
        return self.field.activate(preact + self.blob(x)) * self.field.inside(x)


def field_student(config: FieldTargetConfig, seed: int = 0) -> Student:
    if config.arch not in FIELDS:
        raise ValueError(f"unknown field '{config.arch}'; registered: {sorted(FIELDS)}")
    torch.manual_seed(seed)
    e = config.extent
    overrides = dict(FIELD_DEFAULTS.get(config.arch, {}))
    if config.lr is not None:
        overrides["lr"] = config.lr
    scene = BlobField(build_field(config.arch, aabb=(-e, -e, -e, e, e, e), **overrides),
                      config.blob_density, config.blob_radius)
    white = torch.tensor(WHITE)
    generator = torch.Generator().manual_seed(seed)

    def render(cameras: Cameras) -> Tensor:
        out = render_rays(scene, cameras.rays(), config.samples, perturb=True, background=white, generator=generator)
        return rearrange(out["rgb"], "(n h w) c -> n c h w", n=len(cameras), h=cameras.height)

    @torch.no_grad()
    def render_eval(cameras: Cameras) -> Tensor:
        return rearrange(render_image(scene, cameras, config.samples, background=white)["rgb"], "n h w c -> n c h w")

    @torch.no_grad()
    def surface(cameras: Cameras) -> tuple[Tensor, Tensor]:
        out = render_image(scene, cameras, config.samples, background=white)
        acc = out["accumulation"]
        return out["depth"] / acc.clamp_min(1e-6), acc

    target = Target(render, torch.optim.Adam(scene.field.param_groups()),
                    regularization=scene.field.regularization if config.regularize else None)

    def after_step(step: int) -> None:
        if scene.field.on_train_step(step + 1):  # e.g. TensoRF upsampling: new parameters, new optimizer
            target.optimizer = torch.optim.Adam(scene.field.param_groups())

    target.after_step = after_step

    def export(folder: Path) -> dict[str, str | int]:
        from scene3d.export import save_mesh, tsdf_fusion

        cameras = orbit_views(config.mesh_views, config.mesh_size, elevation_deg=30.0)
        cameras = Cameras.cat([cameras, orbit_views(config.mesh_views // 2, config.mesh_size, -10.0)])
        with torch.no_grad():
            out = render_image(scene, cameras, config.samples, background=torch.zeros(3))
        acc = out["accumulation"]
        rgb = out["rgb"] / acc[..., None].clamp_min(1e-6)
        depth = torch.where(acc > 0.5, out["depth"] / acc.clamp_min(1e-6), torch.zeros_like(acc))
        mesh = tsdf_fusion(cameras, rgb, depth, scene.aabb, config.mesh_voxel)
        return {"mesh": str(save_mesh(Path(folder) / "mesh.ply", mesh)), "mesh_triangles": len(mesh.triangles)}

    return Student(target, render_eval, scene, export, surface)


# Gaussian splats -----------------------------------------------------------------------------------


def _distill_densify() -> DensifyStrategy:
    """Densification for score distillation on CPU: refine every 100 steps from step 100, no opacity
    reset (it would wipe the object mid-run), at most 6000 Gaussians. The growth threshold is on
    the mean screen-space gradient of the SDS surrogate (smaller than a photometric loss's)."""
    return DensifyStrategy(grow_grad2d=2e-5, grow_scale3d=0.02, refine_start=100, refine_stop=1000,
                           refine_every=100, reset_every=10**9, max_gaussians=6000, prune_opacity=0.01)


@dataclass
class SplatTargetConfig:
    """A ball of `n_gaussians` Gaussians (radius `init_radius`, grey, opacity `init_opacity`)."""

    n_gaussians: Annotated[int, Range(1)] = 2000
    init_radius: Annotated[float, Range(0, above=True)] = 0.35
    init_opacity: Annotated[float, Range(0, 1, above=True)] = 0.3
    init_scale: Annotated[float, Range(0, above=True)] = 0.03
    sh_degree: Annotated[int, Range(0, 3)] = 0
    lr_means: Annotated[float, Range(0)] = 1e-3
    lr_scales: Annotated[float, Range(0)] = 1e-2
    lr_quats: Annotated[float, Range(0)] = 1e-3
    lr_opacity: Annotated[float, Range(0)] = 5e-2
    lr_color: Annotated[float, Range(0)] = 2e-2
    pixel_grad_clip: Annotated[float | None, Range(0, above=True)] = None  # Dreamer XL's; set for TSM
    densify: DensifyStrategy = field(default_factory=_distill_densify)


def ball_of_gaussians(config: SplatTargetConfig, generator: torch.Generator) -> GaussianScene:
    """Points uniform in a ball, grey with a little colour noise, isotropic."""
    n = config.n_gaussians
    dirs = F.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    points = dirs * config.init_radius * torch.rand(n, 1, generator=generator) ** (1 / 3)
    colors = (0.5 + 0.1 * torch.randn(n, 3, generator=generator)).clamp(0, 1)
    return GaussianScene.from_points(points, colors, sh_degree=config.sh_degree, scale=config.init_scale,
                                     opacity=config.init_opacity)


def splat_student(config: SplatTargetConfig, seed: int = 0) -> Student:
    generator = torch.Generator().manual_seed(seed)
    scene = ball_of_gaussians(config, generator)
    lrs = {"means": config.lr_means, "log_scales": config.lr_scales, "quats": config.lr_quats,
           "opacity_logits": config.lr_opacity, "sh0": config.lr_color, "shN": config.lr_color / 20}
    optimizer = torch.optim.Adam(scene.param_groups(lrs), eps=1e-15)
    controller = DensityController(config.densify, scene, optimizer, scene_extent=1.0)
    last: dict = {}

    def render(cameras: Cameras) -> Tensor:
        out = rasterize(scene, cameras, backend="auto", background=WHITE)
        controller.before_backward(out)
        last["out"] = out
        return rearrange(out.colors, "n h w c -> n c h w")

    @torch.no_grad()
    def render_eval(cameras: Cameras) -> Tensor:
        return rearrange(rasterize(scene, cameras, background=WHITE).colors, "n h w c -> n c h w").clamp(0, 1)

    @torch.no_grad()
    def surface(cameras: Cameras) -> tuple[Tensor, Tensor]:
        out = rasterize(scene, cameras, background=WHITE)
        return out.depth, out.alpha

    def after_step(step: int) -> None:
        if "out" in last:
            controller.after_backward(step + 1, last.pop("out"))

    def export(folder: Path) -> dict[str, str | int]:
        from scene3d.gaussians.ply import write_ply

        return {"ply": str(write_ply(Path(folder) / "splats.ply", scene)), "gaussians": len(scene)}

    target = Target(render, optimizer, after_step=after_step, pixel_grad_clip=config.pixel_grad_clip)
    return Student(target, render_eval, scene, export, surface)


# toys ---------------------------------------------------------------------------------------------


def voxel_target(lr: float = 0.05, **kwargs) -> tuple[Target, VoxelTarget]:
    scene = VoxelTarget(**kwargs)
    return Target(scene.render, torch.optim.Adam(scene.parameters(), lr=lr)), scene


def voxel_student(seed: int = 0) -> Student:
    torch.manual_seed(seed)
    target, scene = voxel_target(lr=0.01)
    with torch.no_grad():
        scene.grid.normal_(0, 0.1)

    @torch.no_grad()
    def render_eval(cameras: Cameras) -> Tensor:
        scene.eval()  # no sample jitter
        images = scene.render(cameras)
        scene.train()
        return images

    return Student(target, render_eval, scene)


def image_student(seed: int = 0, size: int = 32) -> Student:
    target, logits = image_target(size, lr=0.05, seed=seed)
    holder = nn.Module()
    holder.logits = logits
    return Student(target, lambda cameras: target.render(cameras).detach(), holder)


@dataclass
class TargetOptions:
    """Settings of every registered target (a script exposes them as --targets.field.* etc.)."""

    field: FieldTargetConfig = dataclasses.field(default_factory=FieldTargetConfig)
    splats: SplatTargetConfig = dataclasses.field(default_factory=SplatTargetConfig)
    image_size: Annotated[int, Range(1, 4096)] = 32


TARGETS: dict[str, Callable[[int, TargetOptions], Student]] = {
    "field": lambda seed, o: field_student(o.field, seed),
    "splats": lambda seed, o: splat_student(o.splats, seed),
    "voxels": lambda seed, o: voxel_student(seed),
    "image": lambda seed, o: image_student(seed, o.image_size),
}


def build_target(name: str, seed: int = 0, options: TargetOptions | None = None, guidance: str | None = None
                 ) -> Student:
    """The registered target `name`. For `tsm`, Gaussian renders get Dreamer XL's pixel-wise
    gradient clipping (TSMConfig.pixel_grad_clip) unless the options already set one."""
    if name not in TARGETS:
        raise ValueError(f"unknown target '{name}'; choose from {sorted(TARGETS)}")
    options = options or TargetOptions()
    if name == "splats" and guidance == "tsm" and options.splats.pixel_grad_clip is None:
        from scene3d.distill.score.guidance import TSMConfig

        clip = TSMConfig().pixel_grad_clip
        options = dataclasses.replace(options, splats=dataclasses.replace(options.splats, pixel_grad_clip=clip))
    return TARGETS[name](seed, options)

