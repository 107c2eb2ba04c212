"""`make demo` stage: pretrain a small CanViT on synthetic scenes for a few minutes, evaluate with
frozen probes, plot mIoU against glimpses, and roll the model out on real photographs (`run_stage`)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from avfm.data import photos
from avfm.evaluate import EvalConfig, combine_seeds, evaluate, load_run, summarize, write_results
from avfm.model import CanViT
from avfm.self_distillation import SelfDistillationConfig
from avfm.teachers import DenseTeacherConfig
from avfm.train import DataConfig, OptimConfig, TeacherConfig, TrainConfig, train
from scene3d.train import RunConfig
from viewer.glimpse import GlimpseSession

SSL_STEPS = 400  # the self-supervised teacher's steps in the full demo


def demo_configs(out_dir: Path, quick: bool, source: str = "synthetic") -> tuple[TrainConfig, EvalConfig]:
    """Quick: a smoke run (about a minute on 2 cores). Full: 500 pretraining steps of batch 8 (about
    5 minutes on 2 free cores; budgeted by steps, not time, so a loaded machine takes longer instead
    of training less: the C2F curve needs a few hundred steps).

    Scenes of 64 px, teacher patches of 8 px (an 8 x 8 target grid), CanViT glimpses of 16 px (4 x 4
    patches, `canvit_tiny_g16`) onto an 8 x 8 canvas: as the paper's 128 px glimpses of 512 px
    scenes, C2F sees the scene at 1/4, 1/2 and full resolution at quadtree levels 0, 1, 2. Probes are
    trained on R-IID rollouts of 10 glimpses (as the paper)."""
    data = DataConfig(source=source, n_train=64 if quick else 512, n_val=32 if quick else 128, resolution=64)
    ssl = SelfDistillationConfig(steps=20, batch_size=8, local_crops=2) if quick else SelfDistillationConfig(
        steps=SSL_STEPS)
    supervised = DenseTeacherConfig(steps=60 if quick else 500, batch_size=8 if quick else 16)  # the option's
    teacher = TeacherConfig(name="self_supervised", self_supervised=ssl, supervised=supervised)
    train_cfg = TrainConfig(
        model="canvit_tiny_g16",
        canvas_grid=8,
        data=data,
        teacher=teacher,
        optim=OptimConfig(lr=2e-3, warmup_steps=10 if quick else 50),
        steps=30 if quick else 500,
        batch_size=8,
        run=RunConfig(name="demo_quick" if quick else "demo", output_root=Path(out_dir), log_every=10, eval_every=0,
                      checkpoint_every=100, progress=not quick),
    )
    eval_cfg = EvalConfig(
        run_dir=(str(Path(out_dir) / "avfm" / train_cfg.run.name),),
        steps=5 if quick else 10,
        probe_rollout=3 if quick else 10,
        probe_steps=60 if quick else 300,
        name=train_cfg.run.name,
        output_root=Path(out_dir),
    )
    return train_cfg, eval_cfg


def run_stage(out_dir: Path, quick: bool) -> dict:
    """Pretrain, evaluate and plot; returns headline metrics. Writes under `out_dir`."""
    t0 = time.time()
    out_dir = Path(out_dir)
    source = "synthetic"
    train_cfg, eval_cfg = demo_configs(out_dir, quick, source)
    trained = train(train_cfg)
    model, _, teacher, train_set, val_set = load_run(trained["run_dir"])
    metrics = combine_seeds([evaluate(model, teacher, train_set, val_set, eval_cfg)], [train_cfg.seed])
    folder = out_dir / "avfm_eval" / eval_cfg.name
    plots = write_results(metrics, folder)
    photo_rollouts(model, train_set.images.shape[-1], folder / "photos.png")
    return {
        "source": source,
        "train_steps": trained["steps"],
        "val_patch_mse_f_iid": trained.get("val/f_iid/patch"),
        **summarize(metrics),
        **plots,
        "photos_plot": str(folder / "photos.png"),
        "seconds": round(time.time() - t0, 1),
    }


@torch.no_grad()
def photo_rollouts(model: CanViT, resolution: int, path: Path, n_photos: int = 3, steps: int = 5) -> Path:
    """C2F rollouts on scikit-image's photographs (never seen in training): per photo, the glimpses
    taken (boxes) and the canvas PCA after each glimpse. Writes `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = photos(n_photos, resolution).images
    fig, axes = plt.subplots(n_photos, steps + 1, figsize=(1.6 * (steps + 1), 1.7 * n_photos), squeeze=False)
    for row, image in zip(axes, images, strict=True):
        session = GlimpseSession(model, image, None, "c2f", max_steps=steps)
        pcas = []
        while session.step() is not None:
            pcas.append(session.canvas_pca(4 * model.cfg.canvas_grid))
        row[0].imshow(session.scene_with_boxes())
        for ax, pca in zip(row[1:], pcas, strict=False):
            ax.imshow(pca)
    for i, ax in enumerate(axes[0]):
        ax.set_title("photo, glimpses" if i == 0 else f"canvas after {i}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("CanViT trained on synthetic scenes, rolled out on real photographs (C2F)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
