"""Score-distillation guidances: each gradient equals its paper's formula on a tiny prior with
fixed noise and timesteps, nothing reaches the prior's weights, and a short run on a learnable
target lowers the prior's denoising loss on its renders."""

import math

import pytest
import torch
from torch import nn

from scene3d.diffusion import PixelPrior, PixelPriorConfig
from scene3d.distill.score.distiller import DistillConfig, ScoreDistiller, Target
from scene3d.distill.score.guidance import (
    GUIDANCES,
    ISM,
    SDS,
    TSM,
    VSD,
    camera_features,
    clip_pixel_gradients,
    make_guidance,
)
from scene3d.distill.score.views import camera_angles, orbit_views, random_cameras, view_names
from scene3d.runs import RunDir
from scene3d.train import RunConfig, Stepper, fit
from tests._score_priors import GaussianPrior

TINY = PixelPriorConfig(resolution=16, block_out_channels=(8, 16), norm_num_groups=4, attention=False)
S = 3.0  # guidance scale used throughout


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    return PixelPrior(TINY).freeze()


def _inputs(prior, b=2):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(b, 3, 16, 16, generator=g, requires_grad=True)
    noise = torch.randn(b, 3, 16, 16, generator=g)
    cond, null = prior.condition("box", b), prior.null_condition(b)
    return images, noise, cond, null


def _eps(prior, x, t, y):
    return prior.predict_noise(x, torch.as_tensor(t).reshape(-1), y)


def _cfg(prior, x, t, cond, null):
    eps_u, eps_c = _eps(prior, x, t, null), _eps(prior, x, t, cond)
    return eps_u + S * (eps_c - eps_u)


def _check_surrogate(out, expected):
    assert torch.allclose(out.grad, expected, atol=1e-5, rtol=1e-4)
    (dx,) = torch.autograd.grad(out.loss, out.x, retain_graph=True)
    assert torch.allclose(dx, expected / len(expected), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_sds_gradient_is_its_formula(prior, weighting):
    images, noise, cond, null = _inputs(prior)
    t = torch.tensor([120, 870])
    out = make_guidance("sds", prior, guidance_scale=S, weighting=weighting)(images, cond, null, t=t, noise=noise)
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x = images.detach() * 2 - 1
    x_t = abar.sqrt() * x + (1 - abar).sqrt() * noise
    expected_eps = torch.cat([_cfg(prior, x_t[i:i + 1], t[i], cond[i:i + 1], null[i:i + 1]) for i in range(2)])
    w = {"sds": 1 - abar, "uniform": torch.ones_like(abar), "fantasia3d": abar.sqrt() * (1 - abar)}[weighting]
    _check_surrogate(out, w * (expected_eps - noise))


def test_sds_nan_guard_clipping_and_annealing(prior):
    images, noise, cond, null = _inputs(prior)
    g = make_guidance("sds", prior, guidance_scale=S, grad_clip=0.01, t_max=0.98, t_max_end=0.5, anneal_steps=100)
    out = g(images, cond, null, t=torch.tensor([500, 500]), noise=noise)
    assert out.grad.abs().max() <= 0.01 + 1e-7
    noise_nan = noise.clone()
    noise_nan[0, 0, 0, 0] = float("nan")
    assert torch.isfinite(g(images, cond, null, t=torch.tensor([500, 500]), noise=noise_nan).grad).all()
    assert g.t_bounds(0) == (20, 980) and g.t_bounds(50) == (20, 740) and g.t_bounds(1000) == (20, 500)
    t = g.sample_t(1000, step=100, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 20 and t.max() < 500


def test_vsd_gradient_is_its_formula_and_trains_only_the_estimator(prior):
    images, noise, cond, null = _inputs(prior)
    cameras, _ = random_cameras(2, 16, generator=torch.Generator().manual_seed(0))
    guidance = make_guidance("vsd", prior, guidance_scale=S, estimator_lr=1e-2)
    with torch.no_grad():  # a non-trivial camera embedding, so the camera matters
        guidance.estimator.denoiser.class_embedding.camera[-1].weight.normal_(0, 0.1)
    t = torch.tensor([300, 650])
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x = images.detach() * 2 - 1
    x_t = abar.sqrt() * x + (1 - abar).sqrt() * noise
    with torch.no_grad():
        eps_est = guidance.estimator(x_t, t, cond, camera_features(cameras))
    eps_pre = torch.cat([_cfg(prior, x_t[i:i + 1], t[i], cond[i:i + 1], null[i:i + 1]) for i in range(2)])
    trainable = guidance.trainable_parameters()
    before = [p.detach().clone() for p in trainable]
    out = guidance(images, cond, null, cameras=cameras, t=t, noise=noise)
    _check_surrogate(out, (1 - abar) * (eps_pre - eps_est))
    assert "estimator_loss" in out.extras
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable, strict=True))


@pytest.mark.parametrize("rank", [0, 2])
def test_vsd_estimator_lora_or_copy_starts_at_the_prior_and_shares_frozen_weights(prior, rank):
    from scene3d.lora import LoRAConv2d, LoRALinear

    guidance = make_guidance("vsd", prior, lora_rank=rank, estimator_lr=1e-2)
    est = guidance.estimator
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 700])
    cond = prior.condition("box", 2)
    cameras, _ = random_cameras(2, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # zero-initialised LoRA and camera MLP: the estimator equals the prior
        assert torch.allclose(est(x_t, t, cond, camera_features(cameras)), prior.predict_noise(x_t, t, cond),
                              atol=1e-5)
    n_prior = sum(p.numel() for p in prior.parameters())
    n_train = sum(p.numel() for p in guidance.trainable_parameters())
    wrapped = [m for m in est.modules() if isinstance(m, LoRALinear | LoRAConv2d)]
    if rank == 0:
        assert not wrapped and n_train > n_prior
    else:
        assert wrapped and n_train < n_prior / 2
        shared = {p.data_ptr() for p in prior.parameters()}
        frozen = [p for p in est.parameters() if not p.requires_grad]
        assert frozen and all(p.data_ptr() in shared for p in frozen)  # no second copy of the weights
    prior_before = [p.detach().clone() for p in prior.parameters()]
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    for step in range(3):
        guidance(images, cond, prior.null_condition(2), step, cameras=cameras)
    with torch.no_grad():
        assert not torch.allclose(est(x_t, t, cond, camera_features(cameras)), prior.predict_noise(x_t, t, cond),
                                  atol=1e-5)
    assert all(torch.equal(a, p) for a, p in zip(prior_before, prior.parameters(), strict=True))



def test_vsd_lora_sits_on_attention_by_default_and_on_every_layer_as_an_option(prior):
    """ProlificDreamer / threestudio put the estimator's LoRA on q, k, v and out of the attention
    layers (here the mid block's); `lora_on="all"` also wraps every other Linear and Conv2d. A
    denoiser without attention layers cannot take the default."""
    from diffusers.models.attention_processor import Attention

    from scene3d.lora import LoRAConv2d, LoRALinear

    def wrapped_names(lora_on):
        est = make_guidance("vsd", prior, lora_on=lora_on).estimator
        return {name for name, m in est.denoiser.named_modules() if isinstance(m, LoRALinear | LoRAConv2d)}, est

    attention, est = wrapped_names("attention")
    inside = {f"{name}.{child}" for name, m in est.denoiser.named_modules() if isinstance(m, Attention)
              for child in ("to_q", "to_k", "to_v", "to_out.0")}
    assert attention == inside and attention
    everything, _ = wrapped_names("all")
    assert attention < everything and any(".conv" in name for name in everything)
    from diffusers import UNet2DModel

    no_attention = PixelPrior(TINY, denoiser=UNet2DModel(
        sample_size=16, block_out_channels=(8, 16), norm_num_groups=4, add_attention=False, num_class_embeds=5,
        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)).freeze()
    with pytest.raises(ValueError, match="attention"):
        make_guidance("vsd", no_attention)
    assert make_guidance("vsd", no_attention, lora_on="all").trainable_parameters()

def _ddim_invert(prior, x, eps, cur, nxt):
    a, b = prior.alphas_cumprod[cur], prior.alphas_cumprod[nxt]
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    return math.sqrt(b) * x0 + math.sqrt(1 - b) * eps


def _ism_reference(prior, x0, noise, t, delta, xs_delta, xs_steps, cond, null, gamma=None):
    """LucidDreamer's loop for one sample (scalar timesteps), written independently."""
    s = max(t - delta, 0)
    cur = max(s - xs_delta * xs_steps, 0)
    a = prior.alphas_cumprod[cur]
    x = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
    for _ in range(xs_steps):
        nxt = min(cur + xs_delta, s)
        x = _ddim_invert(prior, x, _eps(prior, x, cur, null), cur, nxt)
        cur = nxt
    eps_s = _eps(prior, x, s, null)
    x_t = _ddim_invert(prior, x, eps_s, s, t)
    target = eps_s
    if gamma is not None:
        mu = int(round(s + (t - s) * math.sqrt(1 - gamma**2)))
        target = _eps(prior, _ddim_invert(prior, x, eps_s, s, mu), mu, null)
    abar_t = prior.alphas_cumprod[t]
    return math.sqrt((1 - abar_t) / abar_t) * (_cfg(prior, x_t, t, cond, null) - target)


@pytest.mark.parametrize("name", ["ism", "tsm"])
def test_ism_and_tsm_gradients_are_their_formulas(prior, name):
    images, noise, cond, null = _inputs(prior)
    guidance = make_guidance(name, prior, guidance_scale=S, delta_t=80, delta_t_start=80, xs_delta_t=200,
                             xs_inv_steps=5)
    t = torch.tensor([700, 150])
    out = guidance(images, cond, null, t=t, noise=noise)
    x0 = images.detach() * 2 - 1
    gamma = guidance.config.gamma if name == "tsm" else None
    expected = torch.cat([_ism_reference(prior, x0[i:i + 1], noise[i:i + 1], int(t[i]), 80, 200, 5,
                                         cond[i:i + 1], null[i:i + 1], gamma) for i in range(2)])
    _check_surrogate(out, expected)


def test_tsm_with_gamma_one_is_ism(prior):
    images, noise, cond, null = _inputs(prior)
    t = torch.tensor([400, 900])
    ism = make_guidance("ism", prior, guidance_scale=S)(images, cond, null, t=t, noise=noise)
    tsm = make_guidance("tsm", prior, guidance_scale=S, gamma=1.0)(images, cond, null, t=t, noise=noise)
    assert torch.allclose(ism.grad, tsm.grad, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ism.grad, make_guidance("tsm", prior, guidance_scale=S)(
        images, cond, null, t=t, noise=noise).grad, atol=1e-4)


@pytest.mark.parametrize("name", sorted(GUIDANCES))
def test_no_gradient_reaches_the_prior(name):
    torch.manual_seed(0)
    prior = PixelPrior(TINY)
    guidance = make_guidance(name, prior, guidance_scale=S)
    prior.requires_grad_(True)  # even if someone unfreezes it, guidance must not touch it
    images, noise, cond, null = _inputs(prior)
    cameras, _ = random_cameras(2, 16)
    before = [p.detach().clone() for p in prior.parameters()]
    out = guidance(images, cond, null, cameras=cameras, noise=noise)
    out.loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, prior.parameters(), strict=True))


def test_pixel_gradient_clipping_caps_each_pixel():
    images = torch.rand(1, 3, 4, 4, requires_grad=True)
    (clip_pixel_gradients(images, 0.05) * torch.randn(1, 3, 4, 4) * 10).sum().backward()
    assert torch.all(images.grad.norm(dim=1) <= 0.05 + 1e-6)
    small = torch.rand(1, 3, 4, 4, requires_grad=True)
    w = torch.randn(1, 3, 4, 4) * 1e-4
    (clip_pixel_gradients(small, 0.05) * w).sum().backward()
    assert torch.allclose(small.grad, w)


def test_view_names_and_cameras():
    deg = torch.deg2rad
    az = deg(torch.tensor([0.0, 20.0, 90.0, 180.0, 200.0, 300.0, 10.0]))
    el = deg(torch.tensor([10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 75.0]))
    assert view_names(az, el) == ["front", "front", "side", "back", "back", "side", "overhead"]
    cams, names = random_cameras(16, 8, generator=torch.Generator().manual_seed(0))
    a, e = camera_angles(cams)
    assert names == view_names(a, e)
    r = cams.centers.norm(dim=-1)
    assert r.min() >= 1.6 - 1e-4 and r.max() <= 2.1 + 1e-4
    assert torch.rad2deg(e).min() >= 5 - 1e-3 and torch.rad2deg(e).max() <= 60 + 1e-3
    assert torch.allclose(cams.forward, torch.nn.functional.normalize(-cams.centers, dim=-1), atol=1e-5)
    assert len(orbit_views(8, 8)) == 8


@pytest.mark.parametrize("name", sorted(GUIDANCES))
def test_short_distillation_lowers_the_denoising_loss(name):
    """A learnable colour image seen from random cameras, distilled from an exact Gaussian prior."""
    torch.manual_seed(0)
    mu = torch.zeros(1, 3, 8, 8)
    mu[:, 0], mu[:, 2] = 0.6, -0.4
    prior = GaussianPrior(mu, sigma=0.1)
    logits = nn.Parameter(torch.randn(1, 3, 8, 8))
    target = Target(render=lambda cams: torch.sigmoid(logits).expand(len(cams), -1, -1, -1),
                    optimizer=torch.optim.Adam([logits], lr=0.05))

    def denoising_loss():
        g = torch.Generator().manual_seed(123)
        x0 = prior.encode(torch.sigmoid(logits.detach())).expand(256, -1, -1, -1)
        return float(prior.denoising_loss(x0, prior.null_condition(256), generator=g).mean())

    guidance = make_guidance(name, prior, guidance_scale=1.0, **({"estimator_lr": 0.05} if name == "vsd" else {}))
    distiller = ScoreDistiller(prior, guidance, [target], DistillConfig(steps=60, batch_size=2, render_size=8))
    before = denoising_loss()
    stepper = Stepper(distiller)
    history = [stepper() for _ in range(60)]
    assert len(history) == 60 and all(math.isfinite(h["loss"]) for h in history)
    assert denoising_loss() < 0.5 * before


def test_distiller_runs_vsd_particles_on_a_pixel_prior(prior):
    logits = [nn.Parameter(torch.zeros(1, 3, 16, 16)) for _ in range(2)]
    targets = [Target(render=lambda cams, p=p: torch.sigmoid(p).expand(len(cams), -1, -1, -1),
                      optimizer=torch.optim.Adam([p], lr=0.01), pixel_grad_clip=0.05) for p in logits]
    guidance = make_guidance("vsd", prior, guidance_scale=S)
    stepper = Stepper(ScoreDistiller(prior, guidance, targets, DistillConfig(prompt="torus", steps=2, batch_size=2,
                                                                             render_size=16)))
    out = [stepper() for _ in range(2)]
    assert "estimator_loss" in out[-1]
    assert not torch.equal(logits[0], logits[1])  # independent particles, each moved
    assert all(p.abs().sum() > 0 for p in logits)


def test_registry_and_types(prior):
    assert set(GUIDANCES) == {"sds", "vsd", "ism", "tsm"}
    assert isinstance(make_guidance("sds", prior), SDS) and isinstance(make_guidance("vsd", prior), VSD)
    assert isinstance(make_guidance("ism", prior), ISM) and isinstance(make_guidance("tsm", prior), TSM)
    with pytest.raises(ValueError, match="choose from"):
        make_guidance("dds", prior)


def test_learning_rates_decay_exponentially_to_the_end_factor_and_a_rebuilt_optimizer_keeps_its_own(prior):
    logits = nn.Parameter(torch.zeros(1, 3, 16, 16))
    target = Target(render=lambda cams: torch.sigmoid(logits).expand(len(cams), -1, -1, -1),
                    optimizer=torch.optim.Adam([logits], lr=0.02))
    seen = []
    target.after_step = lambda step: seen.append(target.optimizer.param_groups[0]["lr"])
    config = DistillConfig(prompt="box", steps=5, batch_size=1, render_size=16, lr_end_factor=0.1)
    distiller = ScoreDistiller(prior, make_guidance("sds", prior, guidance_scale=S), [target], config)
    fit(distiller, None, RunConfig(progress=False), config.steps)
    assert seen == pytest.approx([0.02 * 0.1 ** (k / 4) for k in range(5)])
    target.optimizer = torch.optim.Adam([logits], lr=0.5)  # e.g. TensoRF's upsampling rebuilds it
    distiller.decay_learning_rates(2)
    assert target.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 0.1**0.5)
    assert DistillConfig().lr_end_factor == 0.1


def test_distillation_resumed_from_a_checkpoint_ends_bitwise_equal(prior, tmp_path):
    """VSD (an estimator with its own optimizer) into two particles: stopped after 2 of 4 steps, rebuilt
    and resumed from the checkpoint, it ends with the targets and estimator of an uninterrupted run."""

    def distiller() -> ScoreDistiller:
        torch.manual_seed(0)
        logits = [nn.Parameter(torch.zeros(1, 3, 16, 16)) for _ in range(2)]
        targets = [Target(render=lambda cams, p=p: torch.sigmoid(p).expand(len(cams), -1, -1, -1),
                          optimizer=torch.optim.Adam([p], lr=0.01)) for p in logits]
        config = DistillConfig(prompt="torus", steps=4, batch_size=2, render_size=16)
        return ScoreDistiller(prior, make_guidance("vsd", prior, guidance_scale=S), targets, config)

    def tensors(d: ScoreDistiller) -> list[torch.Tensor]:
        return [p.detach() for _, p in d.named_parameters()] + [p.detach() for p in d.guidance.trainable_parameters()]

    straight = distiller()
    fit(straight, None, RunConfig(progress=False), 4)
    run = RunDir(tmp_path / "r")
    assert not fit(distiller(), run, RunConfig(progress=False, stop_after=2), 4).complete
    resumed = distiller()
    result = fit(resumed, run, RunConfig(progress=False), 4)
    assert result.complete and result.steps_this_run == 2
    assert all(torch.equal(a, b) for a, b in zip(tensors(straight), tensors(resumed), strict=True))
