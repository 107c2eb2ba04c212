"""Teachers (HF round trip, random, trained), target shards, distillation training and exact resume."""

import pytest
import torch

from avfm.data import TargetShards, precompute_targets, toy_scenes, write_target_shards
from avfm.evaluate import load_run
from avfm.teachers import (
    DenseTeacherConfig,
    DenseTeacherTrainer,
    build_teacher,
    load_vit_teacher,
    save_vit_teacher,
    train_dense_teacher,
)
from avfm.train import (
    DataConfig,
    OptimConfig,
    TeacherConfig,
    TrainConfig,
    make_teacher,
    rollout_loss,
    setup,
    train,
    train_step,
    validation_loss,
)
from scene3d.checkpoint import load_checkpoint
from scene3d.errors import CheckpointError, DataError
from scene3d.runs import RunDir
from scene3d.train import RunConfig, fit


def _hf_tiny(kind, tmp_path):
    if kind == "dinov2":
        from transformers import Dinov2Config as C
        from transformers import Dinov2Model as M

        extra = {}
    else:
        from transformers import DINOv3ViTConfig as C
        from transformers import DINOv3ViTModel as M

        extra = {"num_register_tokens": 2}
    torch.manual_seed(0)
    model = M(
        C(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=8,
            image_size=32,
            **extra,
        )
    ).eval()
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("kind", ["dinov2", "dinov3"])
def test_hf_teacher_round_trip(kind, tmp_path):
    model = _hf_tiny(kind, tmp_path)
    teacher = build_teacher(kind, path=tmp_path)
    images = torch.rand(2, 3, 32, 48)
    out = teacher(images)
    assert out.grid == (4, 6) and out.patches.shape == (2, 24, 32) and out.cls.shape == (2, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model(pixel_values=(images - mean) / std).last_hidden_state
    assert torch.allclose(out.patches, ref[:, -24:], atol=1e-5)
    assert torch.allclose(out.cls, ref[:, 0], atol=1e-5)
    assert out.resampled(2).shape == (2, 4, 32)


def test_hf_teacher_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="config.json"):
        build_teacher("dinov2", path=tmp_path / "nope")


def test_random_vit_teacher_is_seeded():
    images = torch.rand(1, 3, 32, 32)
    a, b, c = (build_teacher("random_vit", seed=s)(images).patches for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_trained_teacher_learns_and_round_trips(tmp_path):
    scenes = toy_scenes(24, 32, seed=0)
    cfg = DenseTeacherConfig(dim=48, depth=2, heads=2, steps=40, batch_size=8, lr=3e-3)
    teacher, losses = train_dense_teacher(scenes.images, scenes.labels, 3, scenes.scene_class, cfg)
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    path = save_vit_teacher(tmp_path / "t.safetensors", teacher)
    again = load_vit_teacher(path)
    x = scenes.images[:2]
    assert torch.equal(teacher(x).patches, again(x).patches)
    with pytest.raises(CheckpointError):
        load_vit_teacher(tmp_path / "missing.safetensors")


def test_trained_teacher_resumes_exactly_and_its_checkpoints_load_as_teachers(tmp_path):
    scenes = toy_scenes(12, 32, seed=0)
    cfg = DenseTeacherConfig(dim=24, depth=1, heads=2, steps=6, batch_size=4)
    data = (scenes.images, scenes.labels, 3, scenes.scene_class, cfg)
    straight, losses = train_dense_teacher(*data)
    run = RunDir(tmp_path / "teacher")
    first = fit(DenseTeacherTrainer(*data), run, RunConfig(checkpoint_every=2, stop_after=3, progress=False), 6,
                job_config=cfg)
    assert not first.complete and [s for s, _ in run.checkpoints()] == [2, 3]
    resumed = DenseTeacherTrainer(*data)
    result = fit(resumed, run, RunConfig(checkpoint_every=2, progress=False), 6, job_config=cfg)
    assert result.steps_this_run == 3 and resumed.losses == losses and result.metrics["last_losses"] == losses[-5:]
    x = scenes.images[:2]
    for teacher in (resumed.teacher, load_vit_teacher(run.latest_checkpoint())):
        assert torch.equal(teacher(x).patches, straight(x).patches)


def test_pretraining_run_trains_its_teacher_resumably(tmp_path):
    scenes = toy_scenes(12, 32, seed=0)
    cfg = DenseTeacherConfig(dim=24, depth=1, heads=2, steps=6, batch_size=4)
    straight, _ = train_dense_teacher(scenes.images, scenes.labels, scenes.num_classes, scenes.scene_class, cfg)
    run = RunDir(tmp_path / "avfm")
    interrupted = DenseTeacherTrainer(scenes.images, scenes.labels, scenes.num_classes, scenes.scene_class, cfg)
    fit(interrupted, RunDir(run.path / "teacher"), RunConfig(stop_after=3, progress=False), 6, job_config=cfg)
    teacher = make_teacher(TeacherConfig(name="supervised", supervised=cfg), scenes, run)
    x = scenes.images[:2]
    assert torch.equal(teacher(x).patches, straight(x).patches)
    assert [s for s, _ in RunDir(run.path / "teacher").checkpoints()] == [3, 6]
    assert torch.equal(load_vit_teacher(run.path / "teacher.safetensors")(x).patches, straight(x).patches)


def test_target_shards_stream_rows_from_disk(tmp_path):
    teacher = build_teacher("random_vit", seed=0, dim=24, depth=1, heads=2)
    images = torch.rand(5, 3, 32, 32)
    patches, cls = precompute_targets(teacher, images, grid=2, batch_size=2)
    assert patches.shape == (5, 4, 24) and cls.shape == (5, 24)
    shards = write_target_shards(teacher, images, 2, tmp_path, shard_size=2)
    assert len(shards.paths) == 3 and len(shards) == 5 and shards.patch_shape == (4, 24)
    idx = torch.tensor([4, 0, 3, 3, 1])  # across shards, repeated, out of order
    got_patches, got_cls = shards[idx]
    torch.testing.assert_close(got_patches, patches[idx].half().float())
    torch.testing.assert_close(got_cls, cls[idx].half().float())
    # an interrupted precompute resumes: complete shards are kept, a missing one is recomputed
    stamp = shards.paths[0].stat().st_mtime_ns
    shards.paths[2].unlink()
    again = write_target_shards(teacher, images, 2, tmp_path, shard_size=2)
    assert shards.paths[0].stat().st_mtime_ns == stamp and len(again) == 5
    torch.testing.assert_close(again[torch.tensor([4])][0], patches[4:].half().float())
    shards.paths[1].write_bytes(b"not a shard")
    with pytest.raises(DataError, match="shard_00001.safetensors: patches/cls"):
        TargetShards(tmp_path)


def _cfg(tmp_path, steps, name="run", batch_size=4):
    return TrainConfig(
        data=DataConfig(source="toy", n_train=16, n_val=4, resolution=64),
        teacher=TeacherConfig(name="random_vit"),
        optim=OptimConfig(lr=2e-3, warmup_steps=3),
        steps=steps,
        batch_size=batch_size,
        run=RunConfig(name=name, output_root=tmp_path, log_every=2, checkpoint_every=2, eval_every=0, progress=False),
    )


def test_training_loss_falls(tmp_path):
    """The held-out loss (fixed rollouts) falls below the untrained model's. With the reference's heads (LayerNorm
    weights 1/sqrt(width)) the untrained model already predicts ~0, so the loss starts near the mean predictor's."""
    cfg = _cfg(tmp_path, 30, batch_size=8)
    untrained, teacher, _, val_set, _ = setup(cfg, None)
    before = validation_loss(untrained, val_set, teacher, cfg, torch.device("cpu"))
    metrics = train(cfg)
    assert metrics["steps"] == 30
    assert sum(metrics[f"val/{k}"] for k in before) < 0.93 * sum(before.values())
    assert (tmp_path / "avfm" / "run" / "metrics.json").is_file()
    assert (tmp_path / "avfm" / "run" / "scalars.jsonl").is_file()


def test_both_branches_in_one_batch_equal_two_separate_rollouts(monkeypatch):
    """`train_step` runs F-IID and R-IID as one batch of 2B scenes: its losses and gradients equal those of the
    two rollouts run one after the other (as the reference does) with the same length and viewpoints."""
    import avfm.train as train_module
    from avfm.glimpse import Viewpoint
    from avfm.model import build_model

    torch.manual_seed(0)
    model, b = build_model("canvit_tiny"), 3
    cfg = TrainConfig(model="canvit_tiny", p_stop=0.3)
    scenes, patches, cls = torch.rand(b, 3, 64, 64), torch.randn(b, 64, 96), torch.randn(b, 96)
    drawn, draw = [], train_module.sample_viewpoints
    monkeypatch.setattr(train_module, "sample_viewpoints", lambda *a: drawn.append(draw(*a)) or drawn[-1])
    info = train_step(model, scenes, patches, cls, torch.Generator().manual_seed(3), cfg)
    batched = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert info["glimpses"] >= 4 and len(drawn) == info["glimpses"] // 2  # R-IID's first + one per later step

    model.zero_grad(set_to_none=True)
    losses = {}
    for branch, half, first in (("f_iid", slice(0, b), Viewpoint.full(b)), ("r_iid", slice(b, 2 * b), drawn[0])):
        replay = iter([vp[half] for vp in drawn[1:]])
        monkeypatch.setattr(train_module, "sample_viewpoints", lambda *a, replay=replay: next(replay))
        out = rollout_loss(model, scenes, patches, cls, first, None, cfg, length=info["glimpses"] // 2)
        losses.update({f"{branch}/{k}": out[k].mean().item() for k in ("patch", "cls")})
    for key, value in losses.items():
        assert info[key] == pytest.approx(value, rel=1e-5), key
    for name, grad in batched.items():  # separate rollouts sum their two means; the batch averages them
        torch.testing.assert_close(grad, model.get_parameter(name).grad / 2, rtol=1e-4, atol=1e-6, msg=name)


def test_old_run_folder_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model": "canvit_tiny", "run_name": "old", "out_root": "outputs"}')
    with pytest.raises(CheckpointError, match="older version") as info:
        load_run(tmp_path)
    assert "\n" not in str(info.value)


def test_resume_is_exact(tmp_path):
    train(_cfg(tmp_path, 4, "straight"))
    train(_cfg(tmp_path, 2, "resumed"))
    resumed = train(_cfg(tmp_path, 4, "resumed"))
    assert resumed["steps_this_run"] == 2
    a, _ = load_checkpoint(tmp_path / "avfm" / "straight" / "checkpoints" / "step_0000004.safetensors")
    b, _ = load_checkpoint(tmp_path / "avfm" / "resumed" / "checkpoints" / "step_0000004.safetensors")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_image_folder_with_annotations(tmp_path):
    import imageio.v3 as iio
    import numpy as np

    from avfm.data import load_scenes

    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    for i in range(2):
        img = np.zeros((20, 30, 3), np.uint8)
        img[:, :, i] = 255
        iio.imwrite(tmp_path / "images" / f"s{i}.png", img)
        ann = np.zeros((20, 30), np.uint8)
        ann[10:, :] = 2 + i
        iio.imwrite(tmp_path / "annotations" / f"s{i}.png", ann)
    scenes = load_scenes("folder", 10, 16, path=str(tmp_path))
    assert scenes.images.shape == (2, 3, 16, 16) and scenes.labels.shape == (2, 16, 16)
    assert scenes.images[0, 0].mean() == pytest.approx(1.0) and scenes.images[0, 1].mean() == 0.0
    assert scenes.labels[1, -1, 0] == 3 and scenes.labels[1, 0, 0] == 0 and scenes.num_classes == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_scenes("folder", 10, 16, path=str(tmp_path / "empty"))
    with pytest.raises(DataError, match="folder not found"):
        load_scenes("folder", 10, 16, path=str(tmp_path / "missing"))
