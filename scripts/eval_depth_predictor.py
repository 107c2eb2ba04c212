"""Label-free MVS depth predictor: train per seed, evaluate on held-out worlds and on Middlebury Motorcycle.

    python scripts/eval_depth_predictor.py                      # 3 seeds x 400 steps, a few minutes per seed on 1 core
    python scripts/eval_depth_predictor.py --seeds 0 --mvs.steps 100

Runs live under <output-root>/mvs/<name>_seed<k> (a finished run is loaded, an unfinished one resumed);
writes --output (JSON: per seed and mean / std per metric) and the PNG beside it.
"""

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import matplotlib
import numpy as np
import torch
import tyro

from scene3d.checkpoint import atomic_write_json
from scene3d.cli import run_cli
from scene3d.config import check
from scene3d.distill.splat.data import make_world_views
from scene3d.distill.splat.mvs import MVSConfig, MVSDepthNet, evaluate_mvs, predict_depth, train_mvs
from scene3d.distill.splat.stereo import (
    StereoPair,
    block_matching,
    disparity_metrics,
    load_motorcycle,
    predictor_disparity,
)
from scene3d.errors import ConfigError
from scene3d.runs import config_to_dict
from scene3d.train import RunConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class EvalConfig:
    mvs: MVSConfig = field(default_factory=MVSConfig)
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds (network init and tuple sampling)
    train_worlds: int = 16  # world seeds 0 .. n-1
    heldout_worlds: int = 8  # world seeds 20000 ..
    n_views: int = 24
    size: int = 64
    n_tuples: int = 64  # held-out context pairs evaluated
    downscale: int = 4  # Motorcycle is area-downscaled by this factor
    bm_window: int = 7
    output: Path = Path("outputs/bench/depth_predictor.json")
    run: RunConfig = field(default_factory=lambda: RunConfig(name="eval", eval_every=0, checkpoint_every=100))

    def __post_init__(self) -> None:
        check(self)
        for name in ("train_worlds", "heldout_worlds", "n_tuples", "downscale"):
            if getattr(self, name) < 1:
                raise ConfigError("--" + name.replace("_", "-"), f"must be at least 1, got {getattr(self, name)}")
        if not self.seeds:
            raise ConfigError("--seeds", "must name at least one seed")


def stereo_rows(net: MVSDepthNet, pair: StereoPair, window: int) -> dict[str, tuple[torch.Tensor, dict]]:
    """Disparity maps and their metrics: predictor, its raw cost-volume argmin, SAD and NCC block matching."""
    v = pair.valid
    lo, hi = math.floor(pair.disparity[v].min()), math.ceil(pair.disparity[v].max())  # the search range of all
    pred, raw = predictor_disparity(net, pair, max(lo, 0.5), hi)
    maps = {"predictor": pred, "raw_cost_argmin": raw,
            "block_matching_sad": block_matching(pair.left, pair.right, lo, hi, window, "sad"),
            "block_matching_ncc": block_matching(pair.left, pair.right, lo, hi, window, "ncc")}
    return {k: (m, disparity_metrics(m, pair.disparity, v, pair.downscale)) for k, m in maps.items()}


def summarise(per_seed: list[dict]) -> dict:
    """mean and sample std (n - 1; 0 for one seed) over seeds of every numeric leaf."""
    out = {}
    for key, value in per_seed[0].items():
        if isinstance(value, dict):
            out[key] = summarise([s[key] for s in per_seed])
        else:
            vals = np.array([s[key] for s in per_seed], dtype=float)
            out[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    return out


def figure(path: Path, net: MVSDepthNet, heldout, pair: StereoPair, rows: dict) -> None:
    w = heldout[0]
    idx = torch.tensor([0, 1, 2])
    depth, opacity = predict_depth(net, w.images[idx], w.cameras[idx])
    fig, axes = plt.subplots(4, 5, figsize=(15, 11))
    lo, hi = float(w.depths[w.depths > 0].min()), float(w.depths.max())
    for i in range(3):
        gt, fg = w.depths[i], w.depths[i] > 0
        err = torch.where(fg, (depth[i] - gt).abs() / gt.clamp_min(1e-6), 0.0)
        panels = [(w.images[i], "held-out view", {}),
                  (torch.where(fg, gt, torch.nan), "GT depth", dict(vmin=lo, vmax=hi)),
                  (torch.where(fg, depth[i], torch.nan), "predicted depth (GT fg)", dict(vmin=lo, vmax=hi)),
                  (err, f"abs-rel error (mean {err[fg].mean():.3f})", dict(vmin=0, vmax=0.3, cmap="magma")),
                  (opacity[i], "predicted opacity", dict(vmin=0, vmax=1, cmap="gray"))]
        for ax, (img, title, kw) in zip(axes[i], panels, strict=True):
            im = ax.imshow(img.numpy(), **({"cmap": "turbo"} | kw) if img.ndim == 2 else {})
            ax.set_title(title, fontsize=9)
            if img.ndim == 2:
                fig.colorbar(im, ax=ax, fraction=0.046)
    dmax = float(pair.disparity.max())
    stereo = [(pair.left, f"Motorcycle left (1/{pair.downscale})"),
              (torch.where(pair.valid, pair.disparity, torch.nan), "GT disparity")]
    stereo += [(torch.where(pair.valid, rows[k][0], torch.nan), f"{k}\nEPE {rows[k][1]['epe']:.2f} px")
               for k in ("predictor", "raw_cost_argmin", "block_matching_ncc")]
    for ax, (img, title) in zip(axes[3], stereo, strict=True):
        im = ax.imshow(img.numpy(), **({"cmap": "turbo", "vmin": 0, "vmax": dmax} if img.ndim == 2 else {}))
        ax.set_title(title, fontsize=9)
        if img.ndim == 2:
            fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Label-free MVS predictor: held-out synthetic views (rows 1-3) and Motorcycle disparity (row 4)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(cfg: EvalConfig) -> None:
    train = make_world_views(range(cfg.train_worlds), cfg.n_views, cfg.size)
    heldout = make_world_views(range(20000, 20000 + cfg.heldout_worlds), cfg.n_views, cfg.size)
    pair = load_motorcycle(cfg.downscale)
    per_seed, net, rows = [], None, {}
    for seed in cfg.seeds:
        run = replace(cfg.run, name=f"{cfg.run.name}_seed{seed}").open("mvs", "eval")
        start = time.perf_counter()
        net, losses = train_mvs(train, replace(cfg.mvs, seed=seed), run, cfg.run)
        train_s = time.perf_counter() - start
        rows = stereo_rows(net, pair, cfg.bm_window)
        per_seed.append({"heldout": evaluate_mvs(net, heldout, cfg.n_tuples, seed=0),
                         "motorcycle": {k: m for k, (_, m) in rows.items()}, "loss_last": losses[-1],
                         "train_seconds_this_invocation": train_s})
        print(json.dumps({"seed": seed, **per_seed[-1]}, indent=1))
    out = {"seeds": list(cfg.seeds), "config": config_to_dict(cfg),
           "motorcycle_scale": f"1/{cfg.downscale} (epe, bad_*px at that scale; *_full: errors x {cfg.downscale})",
           "summary": summarise(per_seed), "per_seed": per_seed}
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.output, out)
    figure(cfg.output.with_suffix(".png"), net, heldout, pair, rows)
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(EvalConfig)))
