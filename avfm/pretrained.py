"""The CanViT checkpoints its authors publish, loaded into `avfm.CanViT`: `load_pretrained(DIR)`.

A checkpoint is a folder with `config.json` and `model.safetensors` (as downloaded from the Hugging Face
Hub), in one of canvit-pytorch's two layouts:

- 0.1 (Hub revision `canvit-pytorch-0.1`): `backbone_name`, `model_config`, `canvas_patch_grid_sizes`,
  `metadata`; tensors named as the 0.1 `CanViTForPretraining` (`canvas_read.N.q_proj`, `scene_patches_head`,
  `scene_standardizers.G`, ...);
- 0.2 (the default revision): `canvit_config`, `teacher_dim`, `teacher_patch_grid`, `metadata`; the model's
  tensors under `canvit.` with 0.2's names (`canvas_reads.N.q_map`, `ln_q`, `init_canvas_patch`, ...), the
  heads as `teacher_{patch,cls}_readout` and the standardizers as `teacher_{patch,cls}_standardizer`.

Backbones `vits16`, `vitb16`, `vitl16` (the reference's registry), or the dimensions given under
`backbone_config` (test checkpoints). Everything the reference's tensors need is decided here: the names
(`tensor_rules`: one table per layout, read in both directions so that an error names the checkpoint's key),
the shapes, the standardizers' `fitted` flags (checked, not loaded). The DINOv3 k-bias: the checkpoints keep
the fused qkv bias whole and `avfm.vit.SelfAttention` masks its k third in every forward, as the reference.
Only safetensors are read, never a .bin or .pt file. Whatever does not fit raises one `CheckpointError` naming the file
and the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from avfm.model import CanViT, CanViTConfig
from scene3d.errors import CheckpointError

# The reference's backbone registry (canvit_pytorch.backbone.registry); each uses ffn_ratio 4, RoPE base 100,
# LayerScale 1e-5.
BACKBONES: dict[str, dict[str, int]] = {
    "vits16": {"embed_dim": 384, "num_heads": 6, "n_blocks": 12, "patch_size": 16},
    "vitb16": {"embed_dim": 768, "num_heads": 12, "n_blocks": 12, "patch_size": 16},
    "vitl16": {"embed_dim": 1024, "num_heads": 16, "n_blocks": 24, "patch_size": 16},
}
BACKBONE_DEFAULTS = {"ffn_ratio": 4.0, "rope_base": 100.0, "layerscale_init": 1e-5}
# canvit-pytorch 0.1 `model_config` and 0.2 `canvit_config` fields, in 0.1's names (0.2 name -> 0.1 name).
RENAMED_02 = {"num_canvas_registers": "n_canvas_registers", "num_backbone_registers": "n_backbone_registers",
              "canvas_projections": "canvas_proj_mode"}
MODEL_FIELDS = {"rw_stride", "enable_reads", "n_backbone_registers", "n_canvas_registers", "canvas_num_heads",
                "canvas_head_dim", "enable_vpe", "canvas_update_mode", "canvas_proj_mode", "gate_bias_init",
                "teacher_dim", "backbone_name"}
GLIMPSE_PX = 128  # the published models' glimpses (g128px), when the metadata does not say


@dataclass
class PretrainedConfig:
    """What a checkpoint folder's config.json says, mapped to ours."""

    layout: str  # "0.1" or "0.2"
    backbone_name: str
    model: CanViTConfig
    grids: tuple[int, ...]  # canvas grids with target standardizers (the first is the pretraining grid)
    scene_px: int  # the pretraining scenes' side (metadata, else grid * patch)
    metadata: dict = field(default_factory=dict)


def rw_positions(n_blocks: int, stride: int, reads: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Blocks followed by a read and by a write: every `stride` blocks, reads and writes alternating, and the
    last block always writes (the reference's `compute_rw_positions`)."""
    positions = range(stride - 1, n_blocks, stride)
    read_after, write_after = list(positions[0::2]), list(positions[1::2])
    if not write_after or write_after[-1] != n_blocks - 1:
        write_after.append(n_blocks - 1)
    return (tuple(read_after) if reads else ()), tuple(write_after)


def _read_config(folder: Path) -> dict:
    file = folder / "config.json"
    if not folder.is_dir():
        raise CheckpointError(folder, None, "not a folder: give the checkpoint folder (config.json, model.safetensors)")
    if not file.is_file():
        raise CheckpointError(folder, "config.json", "missing: not a CanViT checkpoint folder")
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(file, None, f"not readable JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(file, None, "not a JSON object")
    return config


def _section(config: dict, file: Path, key: str, kind: type) -> object:
    if key not in config:
        raise CheckpointError(file, key, f"missing (keys: {sorted(config)})")
    if not isinstance(config[key], kind):
        raise CheckpointError(file, key, f"expected a {kind.__name__}, got {config[key]!r}")
    return config[key]


def pretrained_config(folder: str | Path, glimpse_px: int | None = None) -> PretrainedConfig:
    """Read and map a checkpoint folder's config.json (either layout). `glimpse_px` overrides the glimpse size
    (default: the metadata's `glimpse_grid_size` patches, else 128 px)."""
    folder = Path(folder)
    file = folder / "config.json"
    config = _read_config(folder)
    metadata = config.get("metadata") or {}
    if "canvit_config" in config:
        layout = "0.2"
        section = dict(_section(config, file, "canvit_config", dict))
        fields = {RENAMED_02.get(k, k): v for k, v in section.items()}
        fields["teacher_dim"] = _section(config, file, "teacher_dim", int)
        grids = (_section(config, file, "teacher_patch_grid", int),)
        where = "canvit_config"
    elif "model_config" in config:
        layout = "0.1"
        fields = dict(_section(config, file, "model_config", dict))
        fields["backbone_name"] = _section(config, file, "backbone_name", str)
        grids = tuple(_section(config, file, "canvas_patch_grid_sizes", list))
        where = "model_config"
    else:
        raise CheckpointError(file, None, f"neither canvit-pytorch layout: no 'canvit_config' (0.2) or "
                              f"'model_config' (0.1) among {sorted(config)}")
    for key in fields:
        if key not in MODEL_FIELDS:
            raise CheckpointError(file, f"{where}.{key}", "unknown field: this loader cannot map it")
    unsupported = {"canvas_update_mode": "additive", "canvas_proj_mode": "asymmetric", "gate_bias_init": None}
    for key, ours in unsupported.items():
        if fields.get(key, ours) != ours:
            raise CheckpointError(file, f"{where}.{key}", f"{fields[key]!r} is not supported (avfm's CanViT has "
                                  f"{ours!r} canvas updates / projections only)")
    if not grids or not all(isinstance(g, int) and g > 0 for g in grids):
        raise CheckpointError(file, "canvas_patch_grid_sizes" if layout == "0.1" else "teacher_patch_grid",
                              f"expected positive grid sizes, got {grids}")
    if not isinstance(fields.get("backbone_name"), str):
        raise CheckpointError(file, "backbone_name" if layout == "0.1" else f"{where}.backbone_name", "missing")
    backbone = _backbone(config, fields["backbone_name"], file)
    try:
        depth, patch = int(backbone["n_blocks"]), int(backbone["patch_size"])
        read_after, write_after = rw_positions(depth, int(fields["rw_stride"]), bool(fields.get("enable_reads", True)))
        if glimpse_px is None:
            glimpse_px = int(metadata["glimpse_grid_size"]) * patch if "glimpse_grid_size" in metadata else GLIMPSE_PX
        model = CanViTConfig(
            dim=int(backbone["embed_dim"]), depth=depth, heads=int(backbone["num_heads"]),
            mlp_ratio=float(backbone["ffn_ratio"]), patch_size=patch, glimpse_px=glimpse_px,
            registers=int(fields["n_backbone_registers"]),
            canvas_dim=int(fields["canvas_num_heads"]) * int(fields["canvas_head_dim"]),
            canvas_heads=int(fields["canvas_num_heads"]), canvas_registers=int(fields["n_canvas_registers"]),
            read_after=read_after, write_after=write_after, canvas_grid=grids[0],
            teacher_dim=int(fields["teacher_dim"]), vpe=bool(fields["enable_vpe"]),
            rope_base=float(backbone["rope_base"]), layerscale_init=float(backbone["layerscale_init"]),
            imagenet_norm=True)
    except KeyError as err:
        raise CheckpointError(file, f"{where}.{err.args[0]}", "missing") from None
    except (TypeError, ValueError) as err:
        raise CheckpointError(file, where, f"cannot be mapped to a CanViT ({err})") from None
    scene_px = int(metadata.get("scene_resolution", grids[0] * patch))
    return PretrainedConfig(layout, fields["backbone_name"], model, grids, scene_px, metadata)


def _backbone(config: dict, name: str, file: Path) -> dict:
    if "backbone_config" in config:
        given = _section(config, file, "backbone_config", dict)
        unknown = set(given) - set(BACKBONES["vits16"]) - set(BACKBONE_DEFAULTS)
        if unknown:
            raise CheckpointError(file, f"backbone_config.{sorted(unknown)[0]}", "unknown field")
        return {**BACKBONE_DEFAULTS, **given}
    if name not in BACKBONES:
        raise CheckpointError(file, "backbone_name", f"unknown backbone {name!r} (known: {sorted(BACKBONES)}; "
                              "a test checkpoint gives its dimensions under 'backbone_config')")
    return {**BACKBONE_DEFAULTS, **BACKBONES[name]}


# Tensor names: (theirs, ours) templates; {i} a module index, {p} weight / bias, {g} a grid, {s} mean / var.
_BACKBONE_RULES = [
    ("backbone.patch_embed.proj.{p}", "patch_embed.proj.{p}"),
    ("backbone.blocks.{i}.norm1.{p}", "blocks.{i}.norm1.{p}"),
    ("backbone.blocks.{i}.norm2.{p}", "blocks.{i}.norm2.{p}"),
    ("backbone.blocks.{i}.attn.qkv.{p}", "blocks.{i}.attn.qkv.{p}"),
    ("backbone.blocks.{i}.attn.proj.{p}", "blocks.{i}.attn.proj.{p}"),
    ("backbone.blocks.{i}.ls1.gamma", "blocks.{i}.ls1.gamma"),
    ("backbone.blocks.{i}.ls2.gamma", "blocks.{i}.ls2.gamma"),
    ("backbone.blocks.{i}.mlp.fc1.{p}", "blocks.{i}.mlp.0.{p}"),
    ("backbone.blocks.{i}.mlp.fc2.{p}", "blocks.{i}.mlp.2.{p}"),
    ("backbone_registers", "registers"),
    ("vpe.norm.{p}", "vpe.norm.{p}"),
]
_RULES_01 = [
    *_BACKBONE_RULES,
    *((f"canvas_read.{{i}}.{m}.{{p}}", f"reads.{{i}}.{m}.{{p}}") for m in ("q_norm", "kv_norm", "q_proj", "out_proj")),
    *((f"canvas_write.{{i}}.{m}.{{p}}", f"writes.{{i}}.{m}.{{p}}") for m in ("q_norm", "kv_norm", "k_proj", "v_proj")),
    ("canvas_register_init", "canvas_register_init"),
    ("canvas_spatial_init", "canvas_cell_init"),
    ("recurrent_cls_init", "cls_init"),
    ("vpe.B", "vpe.freqs"),
    ("scene_patches_head.norm.{p}", "patch_head.0.{p}"),
    ("scene_patches_head.proj.{p}", "patch_head.1.{p}"),
    ("scene_cls_head.norm.{p}", "cls_head.0.{p}"),
    ("scene_cls_head.proj.{p}", "cls_head.1.{p}"),
    ("scene_standardizers.{g}.{s}", "standardizers.{g}.patch_{s}"),
    ("cls_standardizers.{g}.{s}", "standardizers.{g}.cls_{s}"),
    ("scene_standardizers.{g}._initialized", "standardizers.{g}.fitted"),
    ("cls_standardizers.{g}._initialized", "standardizers.{g}.fitted"),
]


def _rules_02(grid: int) -> list[tuple[str, str]]:
    base = [(f"canvit.{theirs}", ours) for theirs, ours in [
        *_BACKBONE_RULES,
        *((f"canvas_reads.{{i}}.{m}.{{p}}", f"reads.{{i}}.{o}.{{p}}")
          for m, o in (("ln_q", "q_norm"), ("ln_kv", "kv_norm"), ("q_map", "q_proj"), ("o_map", "out_proj"))),
        *((f"canvas_writes.{{i}}.{m}.{{p}}", f"writes.{{i}}.{o}.{{p}}")
          for m, o in (("ln_q", "q_norm"), ("ln_kv", "kv_norm"), ("k_map", "k_proj"), ("v_map", "v_proj"))),
        ("init_canvas_registers", "canvas_register_init"),
        ("init_canvas_patch", "canvas_cell_init"),
        ("init_recurrent_cls", "cls_init"),
        ("vpe.frequencies", "vpe.freqs"),
    ]]
    return [*base,
            ("teacher_patch_readout.norm.{p}", "patch_head.0.{p}"),
            ("teacher_patch_readout.proj.{p}", "patch_head.1.{p}"),
            ("teacher_cls_readout.norm.{p}", "cls_head.0.{p}"),
            ("teacher_cls_readout.proj.{p}", "cls_head.1.{p}"),
            ("teacher_patch_standardizer.{s}", f"standardizers.{grid}.patch_{{s}}"),
            ("teacher_cls_standardizer.{s}", f"standardizers.{grid}.cls_{{s}}"),
            ("teacher_patch_standardizer.fitted", f"standardizers.{grid}.fitted"),
            ("teacher_cls_standardizer.fitted", f"standardizers.{grid}.fitted")]


def tensor_rules(cfg: PretrainedConfig) -> list[tuple[str, str]]:
    """The (checkpoint name, our name) templates of a checkpoint's layout."""
    return _RULES_01 if cfg.layout == "0.1" else _rules_02(cfg.grids[0])


_GROUPS = {"i": r"\d+", "g": r"\d+", "p": "weight|bias", "s": "mean|var"}


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w)\}", template)
    return re.compile("".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>{_GROUPS[p]})" for k, p in enumerate(parts)))


def rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    """A checkpoint tensor name -> ours; None when no rule matches."""
    for theirs, ours in rules:
        if match := _pattern(theirs).fullmatch(key):
            return ours.format(**match.groupdict())
    return None


def sources(key: str, rules: list[tuple[str, str]]) -> list[str]:
    """The checkpoint tensor names that our tensor `key` is loaded from (two for a standardizer's `fitted`)."""
    return [theirs.format(**m.groupdict()) for theirs, ours in rules if (m := _pattern(ours).fullmatch(key))]


def load_pretrained(folder: str | Path, device: str | torch.device = "cpu", glimpse_px: int | None = None) -> CanViT:
    """A reference-layout checkpoint folder (either layout) as an `avfm.CanViT` in eval mode, its heads and
    target standardizers loaded (`model.destandardize` maps the heads' outputs to the teacher's space)."""
    folder = Path(folder)
    cfg = pretrained_config(folder, glimpse_px)
    file = folder / "model.safetensors"
    if not file.is_file():
        pickles = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = f" ({', '.join(pickles)} not read: pickled weights are never loaded)" if pickles else ""
        raise CheckpointError(folder, "model.safetensors", f"missing{hint}")
    rules = tensor_rules(cfg)
    model = CanViT(cfg.model)
    for grid in cfg.grids[1:]:
        model.add_standardizer(grid)
    expected = model.state_dict()
    state, seen = {}, set()
    try:
        with safe_open(file, "pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                ours = rename(key, rules)
                if ours is None or ours not in expected:
                    raise CheckpointError(file, key, "unknown tensor for this config (renamed: "
                                          f"{ours or 'no rule matches'})")
                tensor, seen = f.get_tensor(key), seen | {key}
                if ours.endswith(".fitted"):
                    if not bool(tensor.all()):
                        raise CheckpointError(file, key, "this standardizer's statistics were never fitted")
                    tensor = torch.tensor(True)
                elif tensor.shape != expected[ours].shape:
                    raise CheckpointError(file, key, f"shape {tuple(tensor.shape)}, the config needs "
                                          f"{tuple(expected[ours].shape)}")
                state[ours] = tensor
    except SafetensorError as err:
        raise CheckpointError(file, None, f"not a readable safetensors file ({err})") from None
    for ours in expected:
        for key in sources(ours, rules) or [ours]:
            if key not in seen:
                raise CheckpointError(file, key, "missing tensor")
    model.load_state_dict(state)
    return model.to(device).eval()

