"""Diffusion priors: the pixel prior, the local Stable Diffusion loader, prior and classifier training and resume."""

import json
from pathlib import Path

import pytest
import torch

from scene3d.diffusion import PixelPrior, PixelPriorConfig, StableDiffusionPrior, load_prior
from scene3d.diffusion.data import render_objects
from scene3d.diffusion.train_prior import TrainPriorConfig, train_prior
from scene3d.errors import DataError
from scene3d.train import RunConfig

TINY = PixelPriorConfig(resolution=16, block_out_channels=(8, 16), norm_num_groups=4, attention=False)


def tiny_sd_folder(folder: Path, scaling_factor: float = 0.37) -> Path:
    """Tiny random Stable Diffusion components saved in the diffusers layout."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4).save_pretrained(folder / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  norm_num_groups=4, scaling_factor=scaling_factor).save_pretrained(folder / "vae")
    text = CLIPTextConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=12)
    CLIPTextModel(text).save_pretrained(folder / "text_encoder")
    vocab = ["a", "b", "o", "x", "s", "i", "d", "e", "v", "w", "h", "r", "p", "l", "n", ",", "a</w>", "x</w>",
             "e</w>", "w</w>", ",</w>", "bo", "box</w>", "side</w>", "<|startoftext|>", "<|endoftext|>"]
    CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=[("b", "o"), ("bo", "x</w>")],
                  model_max_length=12).save_pretrained(folder / "tokenizer")
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.save_pretrained(folder / "scheduler")
    return folder


def test_stable_diffusion_round_trip(tmp_path):
    folder = tiny_sd_folder(tmp_path / "sd")
    prior = load_prior(folder)
    assert isinstance(prior, StableDiffusionPrior) and prior.latent
    assert prior.scaling_factor == pytest.approx(0.37) and prior.resolution == 16
    assert not any(p.requires_grad for p in prior.parameters())
    images = torch.rand(2, 3, 24, 24, requires_grad=True)
    z = prior.encode(images)  # resized to 16, VAE /2 -> 8x8 latents
    assert z.shape == (2, 4, 8, 8)
    z.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    cond = prior.condition("a box", 2, views=["side", "front"])
    assert cond.shape == (2, 12, 16) and not torch.allclose(cond[0], cond[1])
    assert prior.null_condition(2).shape == (2, 12, 16)
    # The loaded UNet is the saved one.
    from diffusers import UNet2DConditionModel

    again = UNet2DConditionModel.from_pretrained(folder / "unet")
    t = torch.tensor([10, 500])
    eps = prior.predict_noise(z.detach(), t, cond)
    assert torch.allclose(eps, again(z.detach(), t, encoder_hidden_states=cond).sample, atol=1e-6)
    decoded = prior.decode(z.detach())
    assert decoded.shape == (2, 3, 16, 16) and decoded.min() >= 0 and decoded.max() <= 1


def test_stable_diffusion_latent_scaling_factor(tmp_path):
    folder = tiny_sd_folder(tmp_path / "sd", scaling_factor=2.0)
    prior = StableDiffusionPrior.from_pretrained(folder)
    x = torch.rand(1, 3, 16, 16)
    torch.manual_seed(3)
    z = prior.encode(x)
    torch.manual_seed(3)
    unscaled = prior.vae.encode(x * 2 - 1).latent_dist.sample()
    assert torch.allclose(z, unscaled * 2.0, atol=1e-6)


def test_missing_stable_diffusion_is_a_clear_error(tmp_path):
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        StableDiffusionPrior.from_pretrained(tmp_path / "sd")
    message = str(err.value)
    assert "vae" in message and "text_encoder" in message and "tokenizer" in message and "never downloaded" in message
    assert "unet," not in message  # present components are not listed as missing


def test_pixel_prior_save_load_and_missing(tmp_path):
    torch.manual_seed(0)
    prior = PixelPrior(TINY)
    prior.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_prior(tmp_path / "p")
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.tensor([0, TINY.classes.__len__()])
    assert torch.allclose(prior.predict_noise(x, t, y), loaded.predict_noise(x, t, y), atol=1e-6)
    assert loaded.condition("torus", 2).tolist() == [3, 3] and loaded.null_condition(1).tolist() == [4]
    with pytest.raises(DataError, match="prompt"):
        loaded.condition("teapot", 1)
    with pytest.raises(DataError, match="train_prior"):
        PixelPrior.from_pretrained(tmp_path / "nothing")
    (tmp_path / "p" / "prior.json").write_text(json.dumps({"config": {"bogus": 1}}))
    with pytest.raises(DataError, match="config"):
        PixelPrior.from_pretrained(tmp_path / "p")


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_estimator_starts_equal_to_prior_and_is_camera_conditioned(lora_rank):
    torch.manual_seed(0)
    prior = PixelPrior(TINY).freeze()
    est = prior.make_estimator(lora_rank=lora_rank)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([5, 700]), torch.tensor([1, 2])
    cam = torch.randn(2, 16)
    assert torch.allclose(est(x, t, y, cam), prior.predict_noise(x, t, y), atol=1e-6)
    with torch.no_grad():
        est.denoiser.class_embedding.camera[-1].weight.normal_()
    assert not torch.allclose(est(x, t, y, cam), est(x, t, y, None), atol=1e-4)
    trainable = sum(p.numel() for p in est.parameters() if p.requires_grad)
    if lora_rank == 0:  # a full trainable copy
        assert all(p.requires_grad for p in est.parameters())
    else:  # LoRA adapters and the camera embedding only
        assert 0 < trainable < sum(p.numel() for p in prior.parameters()) / 2
    assert not any(p.requires_grad for p in prior.parameters())


def test_object_renders_are_plain_background_single_objects():
    data = render_objects(1, 3, 16, seed=0)
    assert data.images.shape == (12, 3, 16, 16) and data.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    corners = data.images[:, :, 0, 0]
    assert torch.allclose(corners, torch.ones_like(corners))  # white background, no ground
    assert ((data.images < 0.99).any(1).float().mean((1, 2)) > 0.05).all()  # an object is in every view


def _train_config(tmp_path, name, stop_after=None, **kw):
    run = RunConfig(name=name, output_root=tmp_path, log_every=1, checkpoint_every=4, stop_after=stop_after,
                    progress=False)
    return TrainPriorConfig(prior=TINY, n_objects_per_class=2, views_per_object=4, batch_size=8, warmup_steps=1,
                            sample_every=0, samples_per_class=1, sample_steps=2, device="cpu", run=run, **kw)


def _read_losses(run):
    return [json.loads(line)["train/loss"] for line in (run.path / "scalars.jsonl").read_text().splitlines()]


def test_prior_training_loss_falls(tmp_path):
    run = train_prior(_train_config(tmp_path, "falls", steps=40, lr=3e-3))
    losses = _read_losses(run)
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8
    assert (run.path / "samples_final.png").is_file()
    assert json.loads((run.path / "metrics.json").read_text())["steps"] == 40
    prior = load_prior(run.path)
    assert isinstance(prior, PixelPrior)


def test_prior_training_resume_is_exact(tmp_path):
    from scene3d.checkpoint import load_checkpoint

    straight = train_prior(_train_config(tmp_path, "a", steps=8))
    train_prior(_train_config(tmp_path, "b", steps=8, stop_after=4))
    resumed = train_prior(_train_config(tmp_path, "b", steps=8))
    a, _ = load_checkpoint(straight.latest_checkpoint())
    b, _ = load_checkpoint(resumed.latest_checkpoint())
    assert a["step"] == b["step"] == 8
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert _read_losses(straight) == _read_losses(resumed)


def test_classifier_learns_and_round_trips(tmp_path):
    from scene3d.diffusion.classifier import ClassifierConfig, load_classifier, train_classifier

    config = ClassifierConfig(resolution=16, channels=(8, 16), n_objects_per_class=8, views_per_object=4,
                              n_val_objects_per_class=4, steps=60, batch_size=32, lr=5e-3,
                              run=RunConfig(output_root=tmp_path, eval_every=20, progress=False))
    model, metrics = train_classifier(config)
    assert metrics["val_accuracy"] > 0.5  # chance is 0.2 (four objects and `none`)
    assert [entry["step"] for entry in metrics["timeline"]] == [20, 40, 60]
    loaded, classes = load_classifier(tmp_path / "classifier" / "classifier32")
    x = torch.rand(3, 3, 16, 16)
    assert classes == (*config.classes, "none") and torch.allclose(loaded(x), model(x), atol=1e-6)
    assert (loaded(torch.ones(4, 3, 16, 16)).argmax(-1) == len(config.classes)).all()  # blank: no object
    with pytest.raises(DataError):
        load_classifier(tmp_path / "nothing_here")


def test_classifier_resume_is_exact(tmp_path):
    """Stopped after 5 of 12 steps and rerun, the classifier (model, optimizer, one-cycle schedule,
    generator) ends bitwise equal to an uninterrupted run."""
    from scene3d.diffusion.classifier import ClassifierConfig, train_classifier

    def config(name, stop_after=None):
        return ClassifierConfig(resolution=16, channels=(8,), n_objects_per_class=2, views_per_object=2,
                                n_val_objects_per_class=1, steps=12, batch_size=8,
                                run=RunConfig(name=name, output_root=tmp_path, checkpoint_every=4, eval_every=0,
                                              stop_after=stop_after, progress=False))

    straight, metrics = train_classifier(config("a"))
    _, stopped = train_classifier(config("b", stop_after=5))
    assert stopped == {}
    resumed, again = train_classifier(config("b"))
    assert again["val_accuracy"] == metrics["val_accuracy"] and again["steps"] == 12
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_clutter_images_and_augmentation_stay_in_range():
    from scene3d.diffusion.classifier import augment, clutter_images

    g = torch.Generator().manual_seed(0)
    images = clutter_images(32, 16, g)
    assert images.shape == (32, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    assert len({round(float(x.std()), 4) for x in images}) > 8  # varied, not one image repeated
    objects = torch.rand(64, 3, 16, 16)
    out = augment(objects, g)
    assert out.shape == objects.shape and out.min() >= 0 and out.max() <= 1
    changed = (out - objects).abs().flatten(1).amax(1) > 1e-6
    assert 0 < changed.sum() < 64  # some images augmented, some untouched


@pytest.mark.slow
def test_demo_stage_quick(tmp_path):
    from lab.demo.prior import run_stage

    metrics = run_stage(tmp_path, quick=True)
    assert Path(metrics["samples"]).is_file() and Path(metrics["image_check_png"]).is_file()
    assert metrics["classifier_val_accuracy"] > 0.5
    assert set(metrics["image_check"]) == {"sds", "vsd"}
    assert (tmp_path / "prior_stage.json").is_file()


@pytest.mark.parametrize("name", ["sds", "vsd", "ism"])
def test_guidances_on_the_latent_prior(tmp_path, name):
    from scene3d.distill.score.guidance import make_guidance
    from scene3d.distill.score.views import random_cameras

    prior = StableDiffusionPrior.from_pretrained(tiny_sd_folder(tmp_path / "sd"))
    guidance = make_guidance(name, prior, guidance_scale=7.5)
    prior.denoiser.requires_grad_(True)  # even unfrozen, the UNet must get no gradient
    cameras, views = random_cameras(2, 16)
    if name == "vsd":  # the camera-conditioned copy starts equal to the prior
        z, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([100, 800]), prior.condition("a box", 2)
        assert torch.allclose(guidance.estimator(z, t, cond, torch.randn(2, 16)), prior.predict_noise(z, t, cond),
                              atol=1e-5)
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    out = guidance(images, prior.condition("a box", 2, views), prior.null_condition(2), cameras=cameras)
    assert out.grad.shape == (2, 4, 8, 8)
    out.loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0  # through the (frozen) VAE encoder
    assert all(p.grad is None for p in prior.parameters())
