"""The self-supervised teacher: DINO's augmentations, Sinkhorn-Knopp and centred targets, KoLeo, iBOT masks,
a short training that learns without labels, exact resume, and the trained teacher as the pretraining default."""

import pytest
import torch
import torch.nn.functional as F

from avfm import augment
from avfm.data import toy_scenes
from avfm.self_distillation import (
    SelfDistillationConfig,
    SelfDistillationTrainer,
    centred_sharpened,
    koleo,
    sinkhorn_knopp,
    train_self_distillation,
)
from avfm.teachers import load_vit_teacher
from avfm.train import TeacherConfig, TrainConfig, make_teacher
from scene3d.runs import RunDir
from scene3d.train import RunConfig, fit

TINY = dict(dim=24, depth=1, heads=2, prototypes=32, head_hidden=32, head_bottleneck=16, batch_size=4,
            local_crops=2)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_full_crop_without_flip_is_the_resized_image():
    images = torch.rand(3, 3, 32, 32)
    crop = augment.random_resized_crop(images, 16, (1.0, 1.0), _g(), ratio=(1.0, 1.0), flip=0.0)
    expected = F.avg_pool2d(F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False), 2)
    assert torch.allclose(crop, expected, atol=1e-5)
    flipped = augment.random_resized_crop(images, 16, (1.0, 1.0), _g(), ratio=(1.0, 1.0), flip=1.0)
    assert torch.allclose(flipped, crop.flip(-1), atol=1e-5)


def test_crops_lie_inside_the_image_and_cover_the_asked_area():
    """A constant image stays constant under any crop (no border padding sampled); an image that is 1 on
    its left half gives crops whose mean follows where they were cut."""
    const = torch.full((64, 3, 16, 16), 0.3)
    crops = augment.random_resized_crop(const, 8, (0.05, 0.3), _g())
    assert torch.allclose(crops, torch.full_like(crops, 0.3))
    half = torch.zeros(256, 3, 32, 32)
    half[..., :16] = 1
    means = augment.random_resized_crop(half, 8, (0.1, 0.1), _g(), flip=0.0).mean(dim=(1, 2, 3))
    assert means.min() < 0.05 and means.max() > 0.95  # small crops fall on either half


def test_colour_augmentations_keep_range_and_greyscale_is_grey():
    images = torch.rand(16, 3, 8, 8)
    jittered = augment.colour_jitter(images, _g(), p=1.0)
    assert jittered.min() >= 0 and jittered.max() <= 1 and not torch.allclose(jittered, images)
    assert torch.equal(augment.colour_jitter(images, _g(), p=0.0), images)
    grey = augment.random_greyscale(images, _g(), p=1.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    # zero jitter except hue 0: identity
    same = augment.colour_jitter(images, _g(), p=1.0, brightness=0, contrast=0, saturation=0, hue=0)
    assert torch.allclose(same, images, atol=1e-5)
    solar = augment.solarize(images, _g(), p=1.0)
    assert torch.equal(solar, torch.where(images >= 0.5, 1 - images, images))


def test_blur_keeps_constant_images_and_smooths_noise():
    const = torch.full((4, 3, 16, 16), 0.7)
    assert torch.allclose(augment.gaussian_blur(const, _g(), 1.0, (0.5, 2.0)), const, atol=1e-6)
    noise = torch.rand(4, 3, 16, 16)
    blurred = augment.gaussian_blur(noise, _g(), 1.0, (1.0, 2.0))
    assert blurred.var() < 0.5 * noise.var()
    assert torch.allclose(blurred.mean(), noise.mean(), atol=0.02)


def test_sinkhorn_knopp_gives_distributions_that_use_every_prototype_equally():
    torch.manual_seed(0)
    logits = torch.randn(64, 8) * 0.05 + torch.randn(1, 8)  # near-identical rows, one prototype favoured
    q = sinkhorn_knopp(logits, temp=0.05, iterations=20)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-4)
    assert torch.allclose(q.sum(0), torch.full((8,), 64 / 8), rtol=0.02)
    # the centred softmax keeps the favoured prototype for every row instead
    p = centred_sharpened(logits, torch.zeros(1, 8), 0.05)
    assert p.argmax(1).unique().numel() == 1 and q.argmax(1).unique().numel() > 1


def test_koleo_is_lower_for_spread_points():
    torch.manual_seed(0)
    spread = torch.randn(32, 16)
    clustered = torch.randn(1, 16) + 0.01 * torch.randn(32, 16)
    assert koleo(spread) < koleo(clustered)


def test_masks_follow_the_ratio_and_probability():
    trainer = SelfDistillationTrainer(torch.rand(4, 3, 32, 32), SelfDistillationConfig(**TINY))
    masks = trainer.masks(400, 64)
    counts = masks.sum(1).float()
    masked = counts > 0
    assert 0.35 < masked.float().mean() < 0.65  # mask_probability 0.5
    assert counts[masked].min() >= 0.1 * 64 - 1 and counts.max() <= 0.5 * 64 + 1


def test_self_distillation_learns_without_labels_and_the_teacher_is_its_ema():
    scenes = toy_scenes(32, 32, seed=0)
    cfg = SelfDistillationConfig(**TINY, steps=30, global_px=32, local_px=16, lr=3e-3)
    trainer = SelfDistillationTrainer(scenes.images, cfg)  # images only: the trainer has no way to see a label
    fit(trainer, None, RunConfig(progress=False), cfg.steps, job_config=cfg)
    losses = torch.tensor(trainer.losses)
    assert torch.isfinite(losses).all()
    assert losses[-10:].mean() < losses[:5].mean()  # KoLeo spreads the features, the iBOT loss falls
    student = dict(trainer.student.named_parameters())
    teacher = dict(trainer.teacher.named_parameters())
    assert all(not p.requires_grad for p in teacher.values())
    assert not torch.equal(student["head.mlp.0.weight"], teacher["head.mlp.0.weight"])


@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "centre"])
def test_resume_is_exact_and_checkpoints_load_as_teachers(tmp_path, centering):
    images = toy_scenes(16, 32, seed=1).images
    cfg = SelfDistillationConfig(**TINY, steps=6, global_px=32, local_px=16, centering=centering)
    straight, losses = train_self_distillation(images, cfg)
    run = RunDir(tmp_path / "ssl")
    fit(SelfDistillationTrainer(images, cfg), run, RunConfig(checkpoint_every=2, stop_after=3, progress=False), 6,
        job_config=cfg)
    resumed = SelfDistillationTrainer(images, cfg)
    fit(resumed, run, RunConfig(checkpoint_every=2, progress=False), 6, job_config=cfg)
    assert resumed.losses == losses
    assert (resumed.center.abs().sum() > 0) == (centering == "centre")  # centres move only when they are used
    x = images[:2]
    for teacher in (resumed.vit_teacher, load_vit_teacher(run.latest_checkpoint())):
        assert torch.equal(teacher(x).patches, straight(x).patches)


def test_pretraining_default_teacher_is_self_supervised_and_trained_without_labels(tmp_path):
    assert TrainConfig().teacher.name == "self_supervised"
    scenes = toy_scenes(8, 32, seed=2)
    unlabeled = type(scenes)(scenes.images)  # no labels, no scene classes
    cfg = TeacherConfig(self_supervised=SelfDistillationConfig(**TINY, steps=2, global_px=32, local_px=16))
    run = RunDir(tmp_path / "run")
    teacher = make_teacher(cfg, unlabeled, run)
    assert (run.path / "teacher.safetensors").is_file()
    again = make_teacher(cfg, unlabeled, run)  # reloaded, not retrained
    assert torch.equal(teacher(scenes.images[:1]).patches, again(scenes.images[:1]).patches)
    with pytest.raises(ValueError, match="dense labels"):
        make_teacher(TeacherConfig(name="supervised"), unlabeled, None)


def test_teacher_run_probes_the_teacher_and_its_initialisation(tmp_path):
    from avfm.teacher_runs import TeacherRunConfig, probe_teacher, train_teacher_run

    ssl = SelfDistillationConfig(**TINY, steps=2, global_px=32, local_px=16)
    cfg = TeacherRunConfig(n=8, resolution=32, self_supervised=ssl, probe_scenes=4, probe_steps=3,
                           run=RunConfig(output_root=tmp_path, progress=False, eval_every=0))
    _, result, saved = train_teacher_run(cfg)
    assert result.complete and saved.is_file()
    out = probe_teacher(cfg, load_vit_teacher(saved), saved.parent)
    assert 0 <= out["trained"]["miou"] <= 1 and 0 <= out["untrained"]["miou"] <= 1
    assert out["trained"]["px"] == out["untrained"]["px"] == 32 and out["probe_scenes"] == 4
    assert (saved.parent / "probe.json").is_file()
