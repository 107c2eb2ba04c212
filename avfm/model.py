"""CanViT (Canvas Vision Transformer): a ViT over one glimpse bound to a persistent canvas.

Per glimpse (`CanViT.step`): patch-embed the glimpse; local tokens = [VPE, recurrent CLS, backbone
registers, patches]; run the pre-LN ViT blocks with SR-RoPE (patches at center + s * grid(g));
after the blocks in `read_after` the local stream reads the canvas, after the blocks in `write_after`
the canvas is written (the last block always writes). The canvas is [canvas registers, G x G
spatial cells at grid(G)], fp32, initialised from learned parameters (one vector broadcast over
the cells, so G can change at inference). The recurrent state is explicit, `State(canvas, cls)`,
so a step is a pure function of (glimpse, viewpoint, state).

Heads: LN -> Linear from canvas cells to the teacher's patch space, LN -> Linear from the CLS to
the teacher's CLS space (LN weights start at 1/sqrt(width), as the reference); targets are standardised
per position and channel with statistics kept in the model's buffers, one `TargetStandardizer` per
canvas grid (`fit_standardizer`).

Canvas Attention runs through `avfm.fast_canvas` (cached canvas RoPE tables, scratch buffers without
autograd); `fast_canvas=False` runs the reference modules of `avfm.attention` instead (same results).
Initialisation follows the reference implementation (canvit-pytorch): DINOv3-style backbone blocks
(`avfm.vit`), PyTorch's default init for the Canvas Attention projections and the heads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from avfm.attention import CanvasRead, CanvasWrite
from avfm.coords import flat_grid, glimpse_coords
from avfm.fast_canvas import canvas_rope as cached_canvas_rope
from avfm.fast_canvas import read as fast_read
from avfm.fast_canvas import write as fast_write
from avfm.glimpse import IMAGENET_MEAN, IMAGENET_STD, Viewpoint, extract_glimpse
from avfm.rope import compute_rope, pad_rope, rope_periods
from avfm.standardizer import TargetStandardizer
from avfm.vit import Block, PatchEmbed, init_vit_weights


@dataclass
class CanViTConfig:
    """Sizes of one CanViT. Defaults are `canvit_b` (CanViT-B, paper Table 2)."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    glimpse_px: int = 128
    registers: int = 5
    canvas_dim: int = 1024
    canvas_heads: int = 8
    canvas_registers: int = 16
    read_after: tuple[int, ...] = (1, 5, 9)
    write_after: tuple[int, ...] = (3, 7, 11)
    canvas_grid: int = 32
    teacher_dim: int = 768
    vpe: bool = True
    rope_base: float = 100.0
    layerscale_init: float = 1e-5
    imagenet_norm: bool = False  # scenes ImageNet-normalised before glimpsing (the published weights expect it)

    def __post_init__(self):
        self.read_after, self.write_after = tuple(self.read_after), tuple(self.write_after)
        problems = []
        if self.dim % self.heads or (self.dim // self.heads) % 4:
            problems.append(f"dim {self.dim} / heads {self.heads} must be a multiple of 4")
        if self.canvas_dim % self.canvas_heads or (self.canvas_dim // self.canvas_heads) % 4:
            problems.append(
                f"canvas_dim {self.canvas_dim} / canvas_heads {self.canvas_heads} must be a multiple of 4"
            )
        if not self.write_after or self.write_after[-1] != self.depth - 1:
            problems.append(
                f"every glimpse must end with a write: write_after must end at block {self.depth - 1}"
            )
        if any(not 0 <= b < self.depth for b in (*self.read_after, *self.write_after)):
            problems.append(f"read/write positions must lie in [0, {self.depth})")
        if self.glimpse_px % self.patch_size:
            problems.append(
                f"glimpse_px {self.glimpse_px} must be a multiple of patch_size {self.patch_size}"
            )
        if problems:
            raise ValueError("CanViTConfig: " + "; ".join(problems))

    @property
    def glimpse_grid(self) -> int:
        return self.glimpse_px // self.patch_size

    @property
    def n_prefix(self) -> int:
        return int(self.vpe) + 1 + self.registers


CONFIGS: dict[str, CanViTConfig] = {
    # CanViT-B: ViT-B/16 backbone, 128 px glimpses, canvas 1024 = 8 x 128, 32 x 32 in pretraining.
    "canvit_b": CanViTConfig(),
    # The paper's ViT-S-backbone ablation (Table 12 j): same canvas, D_bb = 384.
    "canvit_s": CanViTConfig(dim=384, heads=6, teacher_dim=384),
    # Small CPU configs (ours): 4 x 4 patch glimpses of 32 px, narrow canvas.
    "canvit_tiny": CanViTConfig(
        dim=96,
        depth=6,
        heads=3,
        patch_size=8,
        glimpse_px=32,
        registers=2,
        canvas_dim=128,
        canvas_heads=4,
        canvas_registers=4,
        read_after=(0, 2, 4),
        write_after=(1, 3, 5),
        canvas_grid=8,
        teacher_dim=96,
    ),
    "canvit_mini": CanViTConfig(
        dim=192,
        depth=8,
        heads=3,
        patch_size=8,
        glimpse_px=32,
        registers=4,
        canvas_dim=256,
        canvas_heads=4,
        canvas_registers=8,
        read_after=(1, 5),
        write_after=(3, 7),
        canvas_grid=16,
        teacher_dim=192,
    ),
}
# canvit_tiny with 16 px glimpses of 4 px patches: on the 64 px demo scenes a glimpse is a quarter of
# the scene side, as the paper's 128 px glimpses of 512 px scenes (C2F level 2 at native resolution).
CONFIGS["canvit_tiny_g16"] = dataclasses.replace(CONFIGS["canvit_tiny"], patch_size=4, glimpse_px=16)


@dataclass
class State:
    """Recurrent state: canvas [B, R_can + G*G, D_can] (fp32) and CLS [B, 1, D]."""

    canvas: Tensor
    cls: Tensor

    def detach(self) -> State:
        return State(self.canvas.detach(), self.cls.detach())


@dataclass
class StepOutput:
    """Per-step outputs: standardised predictions of the teacher (None when heads are off) and the
    backbone's local patch tokens [B, g*g, D]."""

    local_patches: Tensor
    scene_patches: Tensor | None = None  # [B, G*G, D_teacher]
    scene_cls: Tensor | None = None  # [B, D_teacher]
    extras: dict = field(default_factory=dict)


class ViewpointEncoding(nn.Module):
    """VPE token (paper App. B): (y/s, x/s, log s) -> random Fourier features (fixed, sigma 1, drawn with
    seed 42 as the reference) -> LN."""

    def __init__(self, dim: int, seed: int = 42):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, 3, generator=g))
        self.norm = nn.LayerNorm(dim)
        nn.init.constant_(self.norm.weight, 1.0 / math.sqrt(dim))

    def forward(self, viewpoint: Viewpoint) -> Float[Tensor, "B 1 D"]:
        """Always computed in fp32, also under autocast."""
        with torch.autocast(viewpoint.center.device.type, enabled=False):
            s = viewpoint.scale.float()
            z = torch.stack([viewpoint.center[:, 0] / s, viewpoint.center[:, 1] / s, s.log()], dim=-1)
            proj = z @ self.freqs.T
            return self.norm(torch.cat([proj.cos(), proj.sin()], dim=-1))[:, None]


class CanViT(nn.Module):
    def __init__(self, cfg: CanViTConfig, fast_canvas: bool = True):
        super().__init__()
        self.cfg = cfg
        self.fast_canvas = fast_canvas
        d, dc = cfg.dim, cfg.canvas_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, d)
        self.blocks = nn.ModuleList(
            [Block(d, cfg.heads, cfg.mlp_ratio, cfg.layerscale_init) for _ in range(cfg.depth)]
        )
        self.reads = nn.ModuleList([CanvasRead(d, dc, cfg.canvas_heads) for _ in cfg.read_after])
        self.writes = nn.ModuleList([CanvasWrite(d, dc, cfg.canvas_heads) for _ in cfg.write_after])
        self.canvas_register_init = nn.Parameter(torch.randn(1, cfg.canvas_registers, dc) / math.sqrt(dc))
        self.canvas_cell_init = nn.Parameter(torch.randn(1, 1, dc) / math.sqrt(dc))
        self.cls_init = nn.Parameter(torch.randn(1, 1, d) / math.sqrt(d))
        self.registers = nn.Parameter(torch.randn(1, cfg.registers, d) * 0.02)
        self.vpe = ViewpointEncoding(d) if cfg.vpe else None
        self.patch_head = nn.Sequential(nn.LayerNorm(dc), nn.Linear(dc, cfg.teacher_dim))
        self.cls_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.teacher_dim))
        for head in (self.patch_head, self.cls_head):
            nn.init.constant_(head[0].weight, 1.0 / math.sqrt(head[0].normalized_shape[0]))
        init_vit_weights(self.blocks)
        self.standardizers = nn.ModuleDict()
        self.add_standardizer(cfg.canvas_grid)
        self._read_at = {b: i for i, b in enumerate(cfg.read_after)}
        self._write_at = {b: i for i, b in enumerate(cfg.write_after)}

    # state ------------------------------------------------------------------------------------
    def init_state(self, batch_size: int, canvas_grid: int | None = None) -> State:
        """A fresh canvas of G x G cells (G defaults to the config's) and the initial CLS."""
        g = self.cfg.canvas_grid if canvas_grid is None else canvas_grid
        cells = self.canvas_cell_init.expand(batch_size, g * g, -1)
        regs = self.canvas_register_init.expand(batch_size, -1, -1)
        canvas = torch.cat([regs, cells], dim=1).float()
        return State(canvas, self.cls_init.expand(batch_size, -1, -1))

    def canvas_grid_of(self, state: State) -> int:
        n = state.canvas.shape[1] - self.cfg.canvas_registers
        g = math.isqrt(n)
        if g * g != n:
            raise ValueError(f"canvas has {n} spatial cells, not a square grid")
        return g

    def canvas_cells(self, state: State) -> Float[Tensor, "B G2 Dc"]:
        """The spatial canvas tokens (registers dropped), row-major over the G x G grid."""
        return state.canvas[:, self.cfg.canvas_registers :]

    # one glimpse --------------------------------------------------------------------------------
    def glimpse(self, scenes: Float[Tensor, "B 3 H W"], viewpoint: Viewpoint) -> Float[Tensor, "B 3 P P"]:
        """The glimpse `step` takes of scenes in [0, 1] at `viewpoint`; with `imagenet_norm` the scenes are
        normalised first, so outside them the glimpse is the mean colour, as the reference."""
        if self.cfg.imagenet_norm:
            mean, std = (scenes.new_tensor(v)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
            scenes = (scenes - mean) / std
        return extract_glimpse(scenes, viewpoint, self.cfg.glimpse_px)

    def step(
        self, glimpse: Float[Tensor, "B 3 P P"], viewpoint: Viewpoint, state: State, heads: bool = True
    ) -> tuple[State, StepOutput]:
        """Process one glimpse taken at `viewpoint`; returns the new state and the step's outputs."""
        cfg = self.cfg
        patches, h, w = self.patch_embed(glimpse.to(self.cls_init.dtype))
        b = patches.shape[0]
        prefix = [] if self.vpe is None else [self.vpe(viewpoint).to(patches.dtype)]
        prefix += [state.cls.to(patches.dtype), self.registers.expand(b, -1, -1)]
        x = torch.cat([*prefix, patches], dim=1)

        local_pos = rearrange(glimpse_coords(viewpoint.center, viewpoint.scale, h, w), "b h w c -> b (h w) c")
        grid, canvas_head_dim = self.canvas_grid_of(state), cfg.canvas_dim // cfg.canvas_heads
        bb_periods = rope_periods(cfg.dim // cfg.heads, cfg.rope_base, x.device)
        can_periods = rope_periods(canvas_head_dim, cfg.rope_base, x.device)
        bb_rope = compute_rope(local_pos.to(x.device), bb_periods)
        local_rope = compute_rope(local_pos.to(x.device), can_periods)
        if self.fast_canvas:  # tables over every token: the fused rotation, padded once per glimpse
            bb_rope, local_rope = pad_rope(bb_rope, cfg.n_prefix), pad_rope(local_rope, cfg.n_prefix)
            canvas_rope = cached_canvas_rope(grid, cfg.canvas_registers, canvas_head_dim, cfg.rope_base, x.device)
        else:
            canvas_rope = compute_rope(flat_grid(grid, device=x.device)[None], can_periods)

        canvas, owned = state.canvas, False  # owned: a tensor of this step's own, which later writes may update
        for i, block in enumerate(self.blocks):
            x = block(x, bb_rope)
            if i in self._read_at:
                read = self.reads[self._read_at[i]]
                if self.fast_canvas:
                    x = x + fast_read(read, x, canvas, local_rope, canvas_rope)
                else:
                    x = x + read(x, canvas, local_rope, canvas_rope)
            if i in self._write_at:
                write = self.writes[self._write_at[i]]
                if self.fast_canvas:
                    canvas = fast_write(write, canvas, x, canvas_rope, local_rope, in_place=owned)
                    owned = not torch.is_grad_enabled()
                else:
                    canvas = canvas + write(canvas, x, canvas_rope, local_rope)

        n_vpe = int(self.vpe is not None)
        new_state = State(canvas, x[:, n_vpe : n_vpe + 1])
        out = StepOutput(local_patches=x[:, cfg.n_prefix :])
        if heads:
            out.scene_patches, out.scene_cls = self.predict(new_state)
        return new_state, out

    def predict(self, state: State) -> tuple[Tensor, Tensor]:
        """Standardised teacher predictions: patches [B, G*G, D_t] and CLS [B, D_t]."""
        return self.patch_head(self.canvas_cells(state)), self.cls_head(state.cls[:, 0])

    def rollout(
        self, scenes: Tensor, viewpoints: list[Viewpoint], state: State | None = None, heads: bool = True
    ) -> tuple[State, list[StepOutput]]:
        """Run a list of viewpoints over scenes [B, 3, H, W] from `state` (fresh by default)."""
        state = self.init_state(scenes.shape[0]) if state is None else state
        outs = []
        for vp in viewpoints:
            state, out = self.step(self.glimpse(scenes, vp), vp, state, heads)
            outs.append(out)
        return state, outs

    # targets -------------------------------------------------------------------------------------
    def add_standardizer(self, grid: int) -> TargetStandardizer:
        """The (unfitted) standardizer of the teacher's targets on a grid x grid canvas."""
        self.standardizers[str(grid)] = TargetStandardizer(grid, self.cfg.teacher_dim)
        return self.standardizers[str(grid)]

    def standardizer(self, grid: int) -> TargetStandardizer:
        if str(grid) not in self.standardizers:
            have = sorted(map(int, self.standardizers))
            raise ValueError(f"no target standardizer for canvas grid {grid} (this model has grids {have})")
        return self.standardizers[str(grid)]

    def fit_standardizer(self, patches: Float[Tensor, "N G2 Dt"], cls: Float[Tensor, "N Dt"]) -> None:
        """Per-position, per-channel mean / variance of teacher patch targets on the grid they come on
        (one of the model's grids), and per-channel for the CLS."""
        self.standardizer(math.isqrt(patches.shape[1])).fit(patches, cls)

    def standardize(self, patches: Float[Tensor, "B G2 Dt"], cls: Float[Tensor, "B Dt"]) -> tuple[Tensor, Tensor]:
        """Teacher targets on a G x G grid -> the heads' standardised space (the grid's statistics)."""
        return self.standardizer(math.isqrt(patches.shape[-2])).standardize(patches, cls)

    def destandardize(self, patches: Float[Tensor, "B G2 Dt"], cls: Float[Tensor, "B Dt"]) -> tuple[Tensor, Tensor]:
        """The heads' outputs on a G x G canvas -> the teacher's feature space."""
        return self.standardizer(math.isqrt(patches.shape[-2])).destandardize(patches, cls)


def build_model(name: str, **overrides) -> CanViT:
    """A CanViT by config name (`canvit_b`, `canvit_s`, `canvit_mini`, `canvit_tiny`) and field overrides."""
    if name not in CONFIGS:
        raise KeyError(f"unknown CanViT config '{name}'; known: {sorted(CONFIGS)}")
    return CanViT(dataclasses.replace(CONFIGS[name], **overrides))


def count_params(model: nn.Module, heads: bool = False) -> int:
    """Trainable parameters; without the pretraining heads by default (as the paper counts)."""
    skip = () if heads else ("patch_head.", "cls_head.")
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip))
