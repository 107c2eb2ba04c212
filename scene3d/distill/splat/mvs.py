"""A feed-forward multi-view depth and opacity predictor trained without depth labels (MVSplat-style).

Every view of a posed set is a reference whose sources are the other views. A shared CNN gives
L2-normalised features at half resolution; source features are warped to the reference on D planes
uniform in inverse depth between `near` and `far` (plane sweep: unproject the reference pixel centre
at the plane's depth, project into the source, bilinear `grid_sample`); the cost of a plane is the
feature correlation averaged over sources. A 2D CNN over [cost, reference features] adds a residual to
the scaled cost -> softmax over planes -> expected inverse depth (soft-argmin), upsampled bilinearly
and refined at full resolution by an RGB-guided CNN that also predicts an opacity (sigmoid).

Training (`MVSTrainer`) is photometric only: context views' pixels become one RGB Gaussian each at the
predicted depth with the predicted opacity, are splatted into held-out target views over the worlds'
(constant, known) background colour, and L1 + D-SSIM to the target image, an edge-aware smoothness
term on inverse depth and a small opacity prior are minimised. No depth, mask or label is read in
training; ground-truth depth and masks are read only by `evaluate_mvs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from jaxtyping import Float
from torch import Tensor, nn

from scene3d.cameras import Cameras
from scene3d.config import Ordered, Range, check
from scene3d.data.dataset import MultiViewDataset
from scene3d.distill.splat.data import sample_tuple
from scene3d.gaussians.rasterize import rasterize_gaussians
from scene3d.metrics import depth_metrics, ssim_map
from scene3d.rotations import rotmat_to_quat
from scene3d.runs import RunDir, config_to_dict
from scene3d.train import FitResult, RunConfig, fit


@dataclass
class MVSConfig:
    # network
    width: Annotated[int, Range(8)] = 24  # feature channels (multiple of 8: GroupNorm(8))
    refine_width: Annotated[int, Range(8)] = 32  # channels of the cost and full-resolution refiners
    n_planes: Annotated[int, Range(2)] = 32
    near: Annotated[float, Range(0, above=True)] = 1.5  # synthetic worlds: camera z lies in about [1.6, 5.9]
    far: Annotated[float, Range(0, above=True)] = 7.0
    # label-free training
    steps: Annotated[int, Range(1)] = 400
    batch_size: Annotated[int, Range(1)] = 2  # tuples per step: 2 context views + 1 target view each
    baseline_deg: Annotated[tuple[float, float], Range(0, 180), Ordered()] = (10.0, 45.0)
    lr: Annotated[float, Range(0, above=True)] = 2e-3
    footprint: Annotated[float, Range(0, above=True)] = 0.7  # Gaussian in-plane std, context pixels
    ssim_weight: Annotated[float, Range(0, 1)] = 0.85  # photometric = (1 - w) L1 + w (1 - SSIM) / 2
    smooth_weight: Annotated[float, Range(0)] = 0.01  # edge-aware smoothness of mean-normalised inverse depth
    opacity_weight: Annotated[float, Range(0)] = 0.01  # L1 prior on opacity: unneeded Gaussians vanish
    range_jitter: Annotated[float, Range(0)] = 0.0  # per step planes span [near / (1 + j u), far (1 + j u')]
    backend: Literal["auto", "compiled", "torch"] = "auto"  # rasterizer
    seed: int = 0

    def __post_init__(self) -> None:
        check(self)
        if self.far <= self.near:
            raise ValueError(f"MVSConfig.far must exceed near, got near={self.near}, far={self.far}")


def _block(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.GroupNorm(8, cout),
                         nn.GELU())


def plane_inv_depths(near: float, far: float, n: int) -> Float[Tensor, " D"]:
    """Inverse depths of n planes, uniform from 1/near (first) to 1/far (last)."""
    return torch.linspace(1 / near, 1 / far, n)


def warp_to_reference(src: Float[Tensor, "N C h w"], k_ref: Float[Tensor, "N 3 3"], c2w_ref: Float[Tensor, "N 4 4"],
                      k_src: Float[Tensor, "N 3 3"], c2w_src: Float[Tensor, "N 4 4"], inv_depth: Float[Tensor, " D"],
                      image_size: tuple[int, int]) -> Float[Tensor, "N C D h w"]:
    """Plane sweep: source maps (any resolution h x w of an H x W = `image_size` image, pixel centres
    aligned as align_corners=False resampling) sampled at the projection of every reference pixel centre
    unprojected to camera z = 1 / inv_depth[d]; 0 outside the source image or behind it."""
    (_, _, h, w), (height, width) = src.shape, image_size
    v, u = torch.meshgrid((torch.arange(h, dtype=src.dtype, device=src.device) + 0.5) * height / h,
                          (torch.arange(w, dtype=src.dtype, device=src.device) + 0.5) * width / w, indexing="ij")
    pix = rearrange(torch.stack([u, v, torch.ones_like(u)], -1), "h w c -> (h w) c")
    rays = torch.einsum("nij,pj->npi", torch.linalg.inv(k_ref), pix)  # camera z = 1
    rel = torch.linalg.inv(c2w_src) @ c2w_ref  # reference camera -> source camera
    a = torch.einsum("nij,njk,npk->npi", k_src, rel[:, :3, :3], rays)
    b = torch.einsum("nij,nj->ni", k_src, rel[:, :3, 3])
    p = a[:, None] + b[:, None, None] * inv_depth.to(src)[None, :, None, None]  # [N, D, P, 3], z-scaled
    z = p[..., 2:]
    uv = p[..., :2] / z.clamp_min(1e-6)
    grid = uv / torch.tensor([width, height]).to(uv) * 2 - 1
    grid = torch.where(z > 1e-6, grid, torch.full_like(grid, -2.0))  # behind the source: outside
    out = F.grid_sample(src, rearrange(grid, "n d (h w) c -> n (d h) w c", h=h), align_corners=False)
    return rearrange(out, "n c (d h) w -> n c d h w", h=h)


@dataclass
class MVSOutput:
    depth: Float[Tensor, "B V H W"]  # camera z
    opacity: Float[Tensor, "B V H W"]  # in (0, 1)
    cost: Float[Tensor, "B V D h w"]  # raw correlation of every plane (half resolution)
    inv_planes: Float[Tensor, " D"]

    def raw_argmin_depth(self) -> Float[Tensor, "B V H W"]:
        """Depth of the best raw-cost plane per half-resolution pixel, nearest-upsampled (no learned part)."""
        best = self.inv_planes[self.cost.argmax(2)]
        return F.interpolate(1 / best, size=self.depth.shape[-2:], mode="nearest")


class MVSDepthNet(nn.Module):
    def __init__(self, cfg: MVSConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or MVSConfig()
        w, r, d = cfg.width, cfg.refine_width, cfg.n_planes
        self.stem = _block(3, w)  # full resolution, also the refiner's guide
        self.down = nn.Sequential(_block(w, 2 * w), nn.AvgPool2d(2), _block(2 * w, 2 * w), nn.Conv2d(2 * w, w, 1))
        self.cost_net = nn.Sequential(_block(d + w, r), _block(r, r, 2), _block(r, r, 4), nn.Conv2d(r, d, 3, padding=1))
        self.log_temperature = nn.Parameter(torch.tensor(10.0).log())  # logits = temperature * cost + residual
        self.refine = nn.Sequential(_block(3 + w + 2, r), _block(r, r, 2), nn.Conv2d(r, 2, 3, padding=1))
        nn.init.zeros_(self.cost_net[-1].weight)
        nn.init.zeros_(self.cost_net[-1].bias)

    def forward(self, images: Float[Tensor, "B V 3 H W"], K: Float[Tensor, "B V 3 3"], c2w: Float[Tensor, "B V 4 4"],
                near: float | None = None, far: float | None = None) -> MVSOutput:
        """Depth and opacity of every view, the other V - 1 views as its sources (V >= 2, H and W even)."""
        b, v, _, h, w = images.shape
        if v < 2:
            raise ValueError(f"images: a view set needs at least 2 views, got {v}")
        if h % 2 or w % 2:
            raise ValueError(f"images: height and width must be even, got {h}x{w}")
        near, far = near or self.cfg.near, far or self.cfg.far
        inv_planes = plane_inv_depths(near, far, self.cfg.n_planes).to(images)
        x = rearrange(images, "b v c h w -> (b v) c h w")
        guide = self.stem(x)
        feats = F.normalize(self.down(guide), dim=1)
        feats5 = rearrange(feats, "(b v) c h w -> b v c h w", b=b)
        flat = lambda t: rearrange(t, "b v ... -> (b v) ...")  # noqa: E731
        cost = 0
        for shift in range(1, v):  # sources of view i: views (i + shift) % v
            src = [flat(t.roll(-shift, dims=1)) for t in (feats5, K, c2w)]
            warped = warp_to_reference(src[0], flat(K), flat(c2w), src[1], src[2], inv_planes, (h, w))
            cost = cost + torch.einsum("nchw,ncdhw->ndhw", feats, warped) / (v - 1)
        logits = self.log_temperature.exp() * cost + self.cost_net(torch.cat([cost, feats], 1))
        inv = torch.einsum("ndhw,d->nhw", logits.softmax(1), inv_planes)[:, None]
        conf = logits.softmax(1).amax(1, keepdim=True)
        lo, hi = inv_planes[-1], inv_planes[0]
        up = lambda t: F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)  # noqa: E731
        inv_up = up(inv)
        out = self.refine(torch.cat([x, guide, (inv_up - lo) / (hi - lo), up(conf)], 1))
        step = (hi - lo) / (self.cfg.n_planes - 1)
        inv_full = (inv_up + 2 * step * torch.tanh(out[:, :1])).clamp(lo, hi)
        unflat = lambda t: rearrange(t, "(b v) 1 h w -> b v h w", b=b)  # noqa: E731
        return MVSOutput(unflat(1 / inv_full), unflat(torch.sigmoid(out[:, 1:])),
                         rearrange(cost, "(b v) d h w -> b v d h w", b=b), inv_planes)


def _run(net: MVSDepthNet, images: Float[Tensor, "V H W 3"], cameras: Cameras, near: float | None,
         far: float | None) -> MVSOutput:
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(cameras):
        raise ValueError(f"images must be [V,H,W,3] with V = len(cameras) = {len(cameras)}, got {tuple(images.shape)}")
    return net(rearrange(images, "v h w c -> 1 v c h w"), cameras.K[None], cameras.c2w[None], near, far)


@torch.no_grad()
def predict_depth(net: MVSDepthNet, images: Float[Tensor, "V H W 3"], cameras: Cameras, near: float | None = None,
                  far: float | None = None) -> tuple[Float[Tensor, "V H W"], Float[Tensor, "V H W"]]:
    """(depth [V,H,W] camera z, opacity [V,H,W]) of every view, the others as its sources; planes between
    `near` and `far` (default: the net's config)."""
    out = _run(net, images, cameras, near, far)
    return out.depth[0], out.opacity[0]


@torch.no_grad()
def predict_raw_depth(net: MVSDepthNet, images: Float[Tensor, "V H W 3"], cameras: Cameras,
                      near: float | None = None, far: float | None = None) -> Float[Tensor, "V H W"]:
    """The raw cost volume's winner-take-all depth (learned features, no learned cost refinement)."""
    return _run(net, images, cameras, near, far).raw_argmin_depth()[0]


def mvs_depth_fn(net: MVSDepthNet) -> Callable[[Tensor, Cameras], tuple[Tensor, Tensor]]:
    """`(images [V,H,W,3], cameras) -> (depth [V,H,W], opacity [V,H,W])`, `predict_depth` bound to `net`."""
    return lambda images, cameras: predict_depth(net, images, cameras)


# label-free training --------------------------------------------------------------------------
def lift_rgb(cameras: Cameras, depth: Float[Tensor, "V H W"], opacity: Float[Tensor, "V H W"],
             images: Float[Tensor, "V H W 3"], footprint: float) -> dict[str, Tensor]:
    """One RGB Gaussian per pixel (differentiable in depth and opacity): a camera-facing disc of in-plane std
    `footprint` pixels at its depth, a fifth of that along the optical axis (as `lift.lift_views`)."""
    v, h, w = depth.shape
    uv = repeat(cameras.pixel_centers(), "h w c -> v (h w) c", v=v)
    means = cameras.unproject(uv, rearrange(depth, "v h w -> v (h w)"))
    s = footprint * depth / torch.sqrt(cameras.K[:, 0, 0] * cameras.K[:, 1, 1])[:, None, None]
    return {"means": rearrange(means, "v p c -> (v p) c"),
            "quats": repeat(rotmat_to_quat(cameras.c2w[:, :3, :3]), "v c -> (v p) c", p=h * w),
            "scales": rearrange(torch.stack([s, s, 0.2 * s], -1), "v h w c -> (v h w) c"),
            "opacities": rearrange(opacity, "v h w -> (v h w)"),
            "colors": rearrange(images, "v h w c -> (v h w) c")}


def photometric_loss(pred: Float[Tensor, "B H W 3"], target: Float[Tensor, "B H W 3"], ssim_weight: float) -> Tensor:
    """(1 - w) L1 + w (1 - SSIM) / 2 (MVSplat uses MSE + LPIPS; LPIPS weights are not available here)."""
    dssim = (1 - ssim_map(pred, target)).mean() / 2
    return (1 - ssim_weight) * (pred - target).abs().mean() + ssim_weight * dssim


def edge_aware_smoothness(inv_depth: Float[Tensor, "N H W"], images: Float[Tensor, "N H W 3"]) -> Tensor:
    """Gradients of mean-normalised inverse depth, down-weighted by exp(-|image gradient|) (Monodepth2)."""
    d = inv_depth / inv_depth.mean((1, 2), keepdim=True)
    dx, dy = (d[:, :, 1:] - d[:, :, :-1]).abs(), (d[:, 1:] - d[:, :-1]).abs()
    ix = (images[:, :, 1:] - images[:, :, :-1]).abs().mean(-1)
    iy = (images[:, 1:] - images[:, :-1]).abs().mean(-1)
    return (dx * torch.exp(-ix)).mean() + (dy * torch.exp(-iy)).mean()


class MVSTrainer:
    """Photometric training as a `scene3d.train.Trainable`: per step `batch_size` (2 context, 1 target)
    tuples drawn with a generator seeded by (seed, step); AdamW with a cosine learning rate."""

    name = "mvs depth"

    def __init__(self, worlds: list[MultiViewDataset], cfg: MVSConfig):
        self.cfg, self.worlds = cfg, worlds
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = MVSDepthNet(cfg)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=1e-4)
        self.losses: list[float] = []  # per step, since the first (restored on resume)

    def sample(self, step: int) -> tuple[list[tuple[int, Tensor, int]], float, float]:
        """(world, context views [2], target view) per tuple of step `step`, and that step's (near, far):
        jittered so the cost refiner cannot learn a prior over plane indices."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        tuples = []
        for _ in range(cfg.batch_size):
            wi = int(torch.randint(len(self.worlds), (), generator=g))
            context, target = sample_tuple(self.worlds[wi].cameras, 2, cfg.baseline_deg, g)
            tuples.append((wi, context, target))
        u = torch.rand(2, generator=g) * cfg.range_jitter
        return tuples, cfg.near / (1 + u[0].item()), cfg.far * (1 + u[1].item())

    def step_loss(self, batch: tuple[list[tuple[int, Tensor, int]], float, float]) -> tuple[Tensor, dict[str, float]]:
        cfg = self.cfg
        tuples, near, far = batch
        ws = [self.worlds[wi] for wi, _, _ in tuples]
        images = torch.stack([w.images[c] for w, (_, c, _) in zip(ws, tuples, strict=True)])  # [B, 2, H, W, 3]
        cams = [w.cameras[c] for w, (_, c, _) in zip(ws, tuples, strict=True)]
        out = self.net(rearrange(images, "b v h w c -> b v c h w"), torch.stack([c.K for c in cams]),
                       torch.stack([c.c2w for c in cams]), near, far)
        renders, targets = [], []
        for i, (w, (_, _, t)) in enumerate(zip(ws, tuples, strict=True)):
            g = lift_rgb(cams[i], out.depth[i], out.opacity[i], images[i], cfg.footprint)
            renders.append(rasterize_gaussians(**g, cameras=w.cameras[t], backend=cfg.backend,
                                               background=w.background).colors[0])
            targets.append(w.images[t])
        photo = photometric_loss(torch.stack(renders), torch.stack(targets), cfg.ssim_weight)
        smooth = edge_aware_smoothness(rearrange(1 / out.depth, "b v h w -> (b v) h w"),
                                       rearrange(images, "b v h w c -> (b v) h w c"))
        opacity = out.opacity.mean()
        loss = photo + cfg.smooth_weight * smooth + cfg.opacity_weight * opacity
        return loss, {"photometric": photo.item(), "smooth": smooth.item(), "opacity": opacity.item()}

    def loss(self, step: int) -> tuple[Tensor, dict[str, float]]:
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * (step - 1) / cfg.steps))).item()
        loss, logs = self.step_loss(self.sample(step))
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(loss.item())
        return loss, {"loss": self.losses[-1], **logs}

    def guarded_parameters(self) -> Iterator[tuple[str, Tensor]]:
        return self.net.named_parameters()

    def apply(self, step: int) -> dict[str, float]:
        self.opt.step()
        return {}

    def validate(self) -> dict[str, float]:
        return {}

    def finish(self, run: RunDir | None, result: FitResult) -> dict[str, Any]:
        return {"loss_last": self.losses[-1]} if self.losses else {}

    def checkpoint_config(self) -> dict[str, Any]:
        return {"mvs": config_to_dict(self.cfg)}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                "losses": torch.tensor(self.losses, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["optimizer"])
        self.losses = state["losses"].tolist()


def train_mvs(worlds: list[MultiViewDataset], cfg: MVSConfig | None = None, run: RunDir | None = None,
              loop: RunConfig | None = None) -> tuple[MVSDepthNet, list[float]]:
    """Train the predictor on `worlds` (images and poses only) through `scene3d.train.fit`, in `run`
    (checkpoints, exact resume) or in memory (None). Returns the net, frozen, and every step's loss."""
    cfg = cfg or MVSConfig()
    trainer = MVSTrainer(worlds, cfg)
    fit(trainer, run, loop or RunConfig(eval_every=0, progress=False), cfg.steps, job_config=cfg)
    return trainer.net.eval().requires_grad_(False), trainer.losses


@torch.no_grad()
def evaluate_mvs(net: MVSDepthNet, worlds: list[MultiViewDataset], n_tuples: int, seed: int,
                 baseline_deg: tuple[float, float] = (10.0, 45.0)) -> dict[str, float]:
    """Depth errors (`scene3d.metrics.depth_metrics`) of both context views of `n_tuples` random pairs on
    ground-truth foreground pixels, of the prediction and of the raw cost volume's argmin; IoU with the
    foreground mask of opacity > 0.5 and of coverage > 0.5 (the alpha of a view's own Gaussians splatted
    back into it: per-pixel Gaussians overlap, so a surface is opaque with per-Gaussian opacity well below 1)."""
    g = torch.Generator().manual_seed(seed)
    preds, raws, gts, fgs, ops, covs = [], [], [], [], [], []
    for _ in range(n_tuples):
        w = worlds[int(torch.randint(len(worlds), (), generator=g))]
        context, _ = sample_tuple(w.cameras, 2, baseline_deg, g)
        out = _run(net, w.images[context], w.cameras[context], None, None)
        preds.append(out.depth[0])
        raws.append(out.raw_argmin_depth()[0])
        ops.append(out.opacity[0])
        for i in range(len(context)):
            cam = w.cameras[context[i : i + 1]]
            gs = lift_rgb(cam, out.depth[0, i : i + 1], out.opacity[0, i : i + 1], w.images[context[i : i + 1]],
                          net.cfg.footprint)
            covs.append(rasterize_gaussians(**gs, cameras=cam, backend=net.cfg.backend).alpha)
        gts.append(w.depths[context])
        fgs.append(w.depths[context] > 0)
    pred, raw, gt, fg, op, cov = (torch.cat(t) for t in (preds, raws, gts, fgs, ops, covs))
    metrics, raw_metrics = depth_metrics(pred, gt, fg), depth_metrics(raw, gt, fg)
    iou = lambda hit: float((hit & fg).sum() / (hit | fg).sum().clamp_min(1))  # noqa: E731
    return {"abs_rel": metrics["abs_rel"], "delta_1": metrics["delta_1"], "rmse": metrics["rmse"],
            "raw_abs_rel": raw_metrics["abs_rel"], "raw_delta_1": raw_metrics["delta_1"],
            "opacity_iou": iou(op > 0.5), "coverage_iou": iou(cov > 0.5)}
