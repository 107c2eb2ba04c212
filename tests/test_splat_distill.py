"""Splat and Distill: lifting, splatting, upsampling, targets (splat, FiT3D, 2D control), EMA, LoRA, the
distiller (loss, resume, NaN guard) and the 3D probes. The depth predictor's tests are in test_mvs.py."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from scene3d.distill.splat.data import make_world_views, sample_tuple, view_angles
from scene3d.distill.splat.distiller import (
    SplatDistillConfig,
    SplatDistiller,
    ema_update,
    feature_loss,
    pixel_features,
    view_geometry,
)
from scene3d.distill.splat.fit3d import Fit3DConfig, fit_feature_gaussians
from scene3d.distill.splat.lift import LiftConfig, lift_views, splat_features, upsample_features
from scene3d.distill.splat.probes import (
    ProbeConfig,
    camera_normals,
    correspondence_recall,
    dense_probes,
    ground_truth_matches,
    match_features,
)
from scene3d.distill.splat.supervision import pool_to_grid, segment_blend
from scene3d.gaussians.rasterize import rasterize_gaussians
from scene3d.lora import add_lora, merge_lora
from scene3d.metrics import miou
from scene3d.rotations import quat_to_rotmat, rotmat_to_quat
from scene3d.runs import RunDir
from scene3d.train import RunConfig, Stepper, fit


@pytest.fixture(scope="module")
def worlds():
    return make_world_views(range(2), n_views=8, size=32)


def world_points(ds, idx):
    """World xyz of every pixel of views idx [V, H, W, 3] (zeros without depth)."""
    uv = rearrange(ds.cameras.pixel_centers(), "h w c -> 1 (h w) c").expand(len(idx), -1, -1)
    pts = ds.cameras[idx].unproject(uv, rearrange(ds.depths[idx], "v h w -> v (h w)"))
    return rearrange(pts, "v (h w) c -> v h w c", h=ds.height) * (ds.depths[idx] > 0)[..., None]


class PatchConv(nn.Module):
    """A tiny dense 'ViT stand-in': 8 px patches -> D features (a conv and a nonlinearity)."""

    def __init__(self, dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Conv2d(3, dim, 8, stride=8)
        self.mix = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, images):
        return self.mix(torch.tanh(self.embed(images)))


# lifting and splatting ---------------------------------------------------------------------------
def test_rotmat_to_quat_inverts_quat_to_rotmat():
    q = F.normalize(torch.randn(200, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    q = torch.where(q[:, :1] < 0, -q, q)
    assert torch.allclose(rotmat_to_quat(quat_to_rotmat(q)), q, atol=1e-5)


def test_lifting_then_splatting_back_reproduces_context_features(worlds):
    ds, idx = worlds[0], torch.tensor([3])
    patches = torch.randn(1, 6, 4, 4, generator=torch.Generator().manual_seed(0))
    feats = rearrange(upsample_features(patches, (32, 32)), "v d h w -> v h w d")
    sharp = LiftConfig(footprint=0.25, eps2d=0.02, confidence="mask")
    rendered, alpha = splat_features(lift_views(ds.cameras[idx], ds.depths[idx], feats, cfg=sharp), ds.cameras[idx],
                                     eps2d=sharp.eps2d)
    valid = ds.depths[idx] > 0
    assert (alpha[valid] > 0.98).all() and (alpha[~valid] < 1e-6).all()
    assert (rendered - feats)[valid].abs().max() < 1e-3
    # The default (wider, edge-confident) Gaussians blur a little but still reproduce the features.
    default = LiftConfig()
    rendered, alpha = splat_features(lift_views(ds.cameras[idx], ds.depths[idx], feats, cfg=default), ds.cameras[idx])
    keep = valid & (alpha > 0.5)
    assert keep.sum() > 0.75 * valid.sum()  # silhouette pixels get a low confidence by design
    assert F.cosine_similarity(rendered[keep], feats[keep], dim=-1).mean() > 0.98


def test_lifting_to_another_view_lands_on_the_same_3d_points(worlds):
    """Features = world xyz of each context pixel; splatted to a target view and projected into it they
    must land on the pixel they were rendered at (depth is camera z: a ray-distance mix-up fails this)."""
    ds = worlds[1]
    angles = view_angles(ds.cameras)[0]
    context = torch.tensor([0, int(angles[1:].argmin()) + 1])
    target = int(angles[1:].argsort()[1]) + 1
    for cfg, median_px in ((LiftConfig(), 1.5), (LiftConfig(footprint=0.25, eps2d=0.02), 0.5)):
        gaussians = lift_views(ds.cameras[context], ds.depths[context], world_points(ds, context), cfg=cfg)
        rendered, alpha = splat_features(gaussians, ds.cameras[[target]], eps2d=cfg.eps2d)
        keep = (alpha[0] > 0.9) & (ds.depths[target] > 0)
        uv, _ = ds.cameras[[target]].project(rendered[0][keep])
        err = (uv[0] - ds.cameras.pixel_centers()[keep]).norm(dim=-1)
        assert keep.sum() > 30
        assert err.median() < median_px and (err < 2.5).float().mean() > 0.85


def test_feature_rasterizer_equals_per_channel_rendering(worlds):
    ds, idx = worlds[0], torch.tensor([1])
    feats = torch.randn(1, 32, 32, 5)
    g = lift_views(ds.cameras[idx], ds.depths[idx], feats)
    features = g.features.clone().requires_grad_(True)
    cams = ds.cameras[[2]]
    out = rasterize_gaussians(g.means, g.quats, g.scales, g.opacities, features, cams).colors
    weights = torch.randn_like(out)
    (grad_all,) = torch.autograd.grad((out * weights).sum(), features)
    for c in range(5):
        single = features[:, c : c + 1].detach().clone().requires_grad_(True)
        one = rasterize_gaussians(g.means, g.quats, g.scales, g.opacities, single, cams).colors
        assert torch.allclose(one[..., 0], out[..., c], atol=1e-5)
        (grad_one,) = torch.autograd.grad((one[..., 0] * weights[..., c]).sum(), single)
        assert torch.allclose(grad_one[:, 0], grad_all[:, c], atol=1e-5)
    dense = rasterize_gaussians(g.means, g.quats, g.scales, g.opacities, features, cams, backend="dense").colors
    assert torch.allclose(dense, out, atol=1e-4)


def test_label_guided_upsampling_keeps_segments_apart():
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[..., 16:] = 1
    feats = torch.zeros(1, 2, 4, 4)
    feats[:, :, :, 2:] = 1.0
    plain = upsample_features(feats, (32, 32))
    aware = upsample_features(feats, (32, 32), "oracle_labels", labels=labels)
    assert torch.allclose(plain, F.interpolate(feats, size=(32, 32), mode="bilinear", align_corners=False))
    assert 0 < plain[0, 0, 5, 15] < 1  # bilinear bleeds across the boundary
    assert torch.equal(aware, (labels[:, None] == 1).float().expand(-1, 2, -1, -1))
    f = torch.randn(2, 3, 4, 4)
    one_label = upsample_features(f, (32, 32), "oracle_labels", labels=torch.zeros(2, 32, 32, dtype=torch.long))
    assert torch.allclose(one_label, F.interpolate(f, size=(32, 32), mode="bilinear", align_corners=False), atol=1e-6)
    with pytest.raises(ValueError, match="label"):
        upsample_features(f, (32, 32), "oracle_labels")


def test_rgb_guided_upsampling_follows_image_edges_without_labels():
    """A dark left half and a bright right half whose edge falls inside a patch column: joint bilateral
    upsampling keeps each side's feature where bilinear interpolation mixes them."""
    images = torch.zeros(1, 3, 32, 32)
    images[..., 14:] = 1.0
    feats = torch.zeros(1, 2, 4, 4)
    feats[:, :, :, 2:] = 1.0
    plain = upsample_features(feats, (32, 32))
    guided = upsample_features(feats, (32, 32), "rgb", images=images)
    dark, bright = images[0, 0] == 0, images[0, 0] == 1
    assert guided[0, 0][bright].min() > 0.99
    assert guided[0, 0][dark].max() < 0.01
    assert plain[0, 0][dark].max() > 0.15  # bilinear bleeds into the dark side
    # Constant features stay constant; outputs are convex combinations of the patches.
    assert torch.allclose(upsample_features(torch.ones(1, 2, 4, 4), (32, 32), "rgb", images=images),
                          torch.ones(1, 2, 32, 32), atol=1e-6)
    f = torch.randn(2, 3, 4, 4)
    out = upsample_features(f, (32, 32), "rgb", images=torch.rand(2, 3, 32, 32))
    assert (out <= f.amax((2, 3), keepdim=True) + 1e-5).all() and (out >= f.amin((2, 3), keepdim=True) - 1e-5).all()
    with pytest.raises(ValueError, match="images"):
        upsample_features(f, (32, 32), "rgb")


def test_segment_blend_and_pooling():
    feats = torch.arange(16.0).reshape(4, 4, 1)
    seg = torch.tensor([[0, 0, 1, 1]] * 4)
    valid = torch.ones(4, 4, dtype=torch.bool)
    valid[0, 0] = False
    out = segment_blend(feats, seg, valid, 0.5)
    mean0 = feats[:, :2][valid[:, :2]].mean()
    assert torch.isclose(out[1, 1, 0], 0.5 * feats[1, 1, 0] + 0.5 * mean0)
    assert out[0, 0, 0] == feats[0, 0, 0]  # invalid pixels untouched
    target, mask = pool_to_grid(feats, valid, (2, 2), min_coverage=0.9)
    assert mask.tolist() == [[False, True], [True, True]]
    assert torch.isclose(target[0, 0, 0], torch.tensor((1.0 + 4.0 + 5.0) / 3))
    assert torch.isclose(target[0, 1, 1], feats[2:, 2:].mean())


def test_tuple_sampler_respects_the_baseline(worlds):
    cams = worlds[0].cameras
    angles = view_angles(cams)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        context, target = sample_tuple(cams, 2, (5.0, 90.0), g)
        assert target not in context.tolist() and len(set(context.tolist())) == 2
        a = angles[target, context]
        if ((angles[target] >= 5) & (angles[target] <= 90)).sum() >= 2:
            assert ((a >= 5) & (a <= 90)).all()


# distiller -----------------------------------------------------------------------------------------
def test_ema_update_is_exact():
    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t0, t, s in zip(before, teacher.parameters(), student.parameters(), strict=True):
        assert torch.equal(t, t0 * 0.9 + s * (1 - 0.9)) or torch.allclose(t, 0.9 * t0 + 0.1 * s, atol=0, rtol=1e-6)
    ema_update(teacher, student, 0.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters(), strict=True))
    frozen = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, nn.Linear(4, 3), 1.0)
    assert all(torch.equal(t, f) for t, f in zip(teacher.parameters(), frozen, strict=True))


def test_feature_loss_masks_and_kinds():
    pred, target = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[0, 1, 1] = True
    cos = 1 - F.cosine_similarity(pred[0, :, 1, 1], target[0, :, 1, 1], dim=0)
    assert torch.isclose(feature_loss(pred, target, mask, "cosine"), cos)
    assert torch.isclose(feature_loss(pred, target, mask, "mse"), (pred[0, :, 1, 1] - target[0, :, 1, 1]).pow(2).mean())
    assert feature_loss(pred, pred + 0 * target, torch.ones_like(mask), "cosine").abs() < 1e-6


def _distiller(worlds, student_seed: int = 0, **overrides):
    """PatchConv has no qkv / proj, so full fine-tuning; oracle depth (the predictor is test_mvs.py's)."""
    teacher = PatchConv()
    cfg = SplatDistillConfig(**{"steps": 6, "batch_size": 2, "lr": 3e-3, "warmup": 1, "lora_rank": 0,
                                "depth_source": "oracle", "ema_momentum": 0.9, "ema_every": 2, **overrides})
    return SplatDistiller(PatchConv(seed=student_seed), copy.deepcopy(teacher), worlds, cfg)


@pytest.mark.parametrize("mode", ["full", "pca"])
def test_short_distillation_reduces_its_loss(worlds, mode):
    d = _distiller(worlds, student_seed=1, steps=15, ema_momentum=1.0, feature_mode=mode, pca_dim=4, loss="mse")
    fixed = [b for s in range(1000, 1004) for b in d.sample_batch(s)]
    with torch.no_grad():
        before, mask = d.batch_loss(fixed)
    assert mask.any()
    fit(d, None, RunConfig(progress=False), d.cfg.steps)
    with torch.no_grad():
        after, _ = d.batch_loss(fixed)
    assert after < 0.7 * before


def test_resume_equals_uninterrupted(worlds, tmp_path):
    loop = RunConfig(checkpoint_every=3, progress=False)
    straight = _distiller(worlds)
    fit(straight, RunDir(tmp_path / "a"), loop, 6)
    first = _distiller(worlds)
    assert not fit(first, RunDir(tmp_path / "b"), dataclasses.replace(loop, stop_after=3), 6).complete
    resumed = _distiller(worlds)  # fresh objects, state from the step-3 checkpoint
    result = fit(resumed, RunDir(tmp_path / "b"), loop, 6)
    assert result.complete and result.steps_this_run == 3
    assert resumed.losses == straight.losses and len(resumed.losses) == 6
    assert result.metrics["loss_last"] == straight.losses[-1]
    for a, b in zip(straight.student.state_dict().values(), resumed.student.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.teacher.state_dict().values(), resumed.teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert (tmp_path / "b" / "loss.png").is_file()


def test_nonfinite_step_is_skipped_without_update_or_ema(worlds, monkeypatch):
    monkeypatch.setenv("SCENE3D_FAULT_NAN_STEP", "2")
    d = _distiller(worlds, student_seed=1, steps=3)
    result = fit(d, None, RunConfig(progress=False, nonfinite="skip"), 3)
    assert result.skipped_steps == [2] and result.metrics["nonfinite_skipped_steps"] == 1
    monkeypatch.delenv("SCENE3D_FAULT_NAN_STEP")
    straight = Stepper(_distiller(worlds, student_seed=1, steps=3))
    straight()  # step 1, then step 3 alone (each step samples with its own generator)
    straight.step = 2
    straight()
    straight = straight.trainable
    for a, b in zip(d.student.state_dict().values(), straight.student.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(d.teacher.state_dict().values(), straight.teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_ema_moves_the_teacher_every_ema_every_steps(worlds):
    d = _distiller(worlds, student_seed=1, steps=4, ema_every=2)
    stepper = Stepper(d)
    before = [p.detach().clone() for p in d.teacher.parameters()]
    stepper()  # step 1: no EMA update
    assert all(torch.equal(a, b) for a, b in zip(before, d.teacher.parameters(), strict=True))
    stepper()  # step 2: the update
    assert not all(torch.equal(a, b) for a, b in zip(before, d.teacher.parameters(), strict=True))


def test_2d_control_targets_are_the_teachers_own_features(worlds):
    ds = worlds[0]
    d = _distiller(worlds, target_source="2d")
    batch = [(0, torch.tensor([0, 1]), 3)]
    target, mask = d.targets(batch, (4, 4))
    own = rearrange(pixel_features(d.teacher, ds, torch.tensor([3]), "rgb")[0], "h w d -> 1 d h w")
    assert mask.all() and torch.allclose(target, F.adaptive_avg_pool2d(own, (4, 4)), atol=1e-5)
    same = SplatDistiller(PatchConv(), PatchConv(), worlds, dataclasses.replace(d.cfg, upsample="bilinear"))
    loss, _ = same.batch_loss(batch)  # the student starts as the teacher: nothing to learn at first
    assert loss < 0.02


def test_predicted_geometry_is_the_default_and_needs_a_predictor(worlds):
    cfg = SplatDistillConfig(batch_size=2, lora_rank=0)
    assert cfg.depth_source == "predicted" and cfg.upsample == "rgb"
    with pytest.raises(ValueError, match="depth_fn"):
        SplatDistiller(PatchConv(), PatchConv(), worlds, cfg)
    calls = []

    def predictor(images, cameras):  # [V, H, W, 3], V cameras -> the dataset's depth, opaque where it has one
        calls.append(len(cameras))
        depth = worlds[0].depths[: len(cameras)]
        return depth.clamp_min(0.1), (depth > 0).float()

    d = SplatDistiller(PatchConv(), PatchConv(), worlds, cfg, depth_fn=predictor)
    target, mask = d.targets([(0, torch.tensor([0, 1]), 2)], (4, 4))
    assert calls == [2] and target.shape == (1, 8, 4, 4) and torch.isfinite(target).all() and mask.any()
    depth, opacity = view_geometry(worlds[0], cfg, predictor)
    assert depth.shape == opacity.shape == (8, 32, 32) and calls[-1] == 3


def test_fit3d_baseline_densifies_fits_and_serves_targets(worlds):
    ds = worlds[0]
    feats = world_points(ds, torch.arange(len(ds)))
    cfg = Fit3DConfig(n_points=400, steps=12, feature_dim=4, lr_features=0.05)
    cfg.densify = dataclasses.replace(cfg.densify, refine_start=2, refine_stop=11, refine_every=5, grow_grad2d=1e-6)
    scene, decoder, losses = fit_feature_gaussians(ds, feats, ds.depths, (ds.depths > 0).float(), cfg)
    assert losses[-1] < losses[0]
    assert len(scene) != 400  # densification cloned / split / pruned
    assert scene.features.shape[1] == 4 and decoder(scene.features).shape == (len(scene), 3)
    d = SplatDistiller(PatchConv(), PatchConv(), [ds], SplatDistillConfig(target_source="fit3d", batch_size=2,
                                                                          lora_rank=0),
                       fit3d_scenes=[scene], fit3d_decoders=[decoder])
    target, mask = d.targets(d.sample_batch(1), (4, 4))
    assert target.shape == (2, 3, 4, 4) and mask.any()


# probes ----------------------------------------------------------------------------------------------
def test_identical_features_give_perfect_correspondence(worlds):
    ds = worlds[0]
    uv_i, uv_j = ground_truth_matches(ds, 2, 2)
    assert torch.allclose(uv_i, uv_j, atol=1e-3) and len(uv_i) > 50
    unique = torch.randn(32, 32, 16)
    assert torch.equal(match_features(unique, unique, uv_i, ds.depths[2] > 0), uv_i)
    # Features = world coordinates lifted onto a sphere ([p, sqrt(R^2 - |p|^2)], so cosine similarity
    # ranks like 3D distance): the nearest feature is the nearest 3D point, recall is ~perfect;
    # random features are not.
    xyz = world_points(ds, torch.arange(len(ds)))
    lifted = torch.cat([xyz, (100 - xyz.pow(2).sum(-1, keepdim=True)).sqrt()], -1)
    cfg = ProbeConfig(pairs_per_world=28, query_stride=2, angle_bins=(0.0, 60.0, 180.0))
    good = correspondence_recall([lifted], [ds], cfg)
    bad = correspondence_recall([torch.randn(len(ds), 32, 32, 3)], [ds], cfg)
    assert good["queries"] > 100
    assert good["recall@10px"] > 0.97 and good["recall@20px"] > 0.99
    assert bad["recall@10px"] < 0.3
    assert set(good["per_bin"]) == {"0-60deg", "60-180deg"}


def test_ground_truth_matches_agree_with_geometry(worlds):
    ds = worlds[1]
    uv_i, uv_j = ground_truth_matches(ds, 0, 1)
    assert len(uv_i) > 20
    pts_i = ds.cameras[0].unproject(uv_i[None], ds.depths[0, uv_i[:, 1].long(), uv_i[:, 0].long()][None])[0]
    back, _ = ds.cameras[1].project(pts_i)
    assert torch.allclose(back[0], uv_j, atol=1e-4)


def test_dense_probes_on_planted_features(worlds):
    def planted(ds):
        log_depth = torch.where(ds.depths > 0, ds.depths.clamp_min(1e-3).log(), torch.zeros_like(ds.depths))
        onehot = F.one_hot(ds.semantic, 6).float()
        return torch.cat([log_depth[..., None], camera_normals(ds), onehot], -1)

    train, test = worlds[:1], worlds[1:]
    m = dense_probes([planted(train[0])], train, [planted(test[0])], test, ProbeConfig(ridge=1e-6, seg_steps=200))
    assert m["depth_rmse"] < 1e-3 and m["depth_delta1"] == 1.0
    assert m["normal_mean_deg"] < 0.5 and m["normal_within_11.25"] == 1.0
    assert m["seg_miou"] > 0.99
    noise = [torch.randn(8, 32, 32, 4)]
    n = dense_probes(noise, train, [torch.randn(8, 32, 32, 4)], test, ProbeConfig(seg_steps=50))
    assert n["depth_rmse"] > 10 * m["depth_rmse"] and n["seg_miou"] < 0.6


def test_miou_planted():
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    assert miou(target, target, 4) == 1.0
    assert math.isclose(miou(torch.tensor([0, 0, 1, 1, 1, 1]), target, 3), (1 + 0.5 + 0) / 3)


def test_script_reports_a_bad_teacher_path_in_one_line(tmp_path):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "scripts/splat_distill.py", "--teacher.path", str(tmp_path / "missing"),
                           "--output-root", str(tmp_path / "out"), "--worlds.n-distill", "1", "--worlds.n-views", "4"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and "missing" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written before the teacher loads


@pytest.mark.slow
def test_demo_stage_quick(tmp_path):
    from avfm.teachers import random_vit_teacher, save_vit_teacher
    from lab.demo.splat_distill import run_stage

    saved = save_vit_teacher(tmp_path / "avfm" / "demo_quick" / "teacher.safetensors", random_vit_teacher(seed=3))
    out = run_stage(tmp_path, quick=True)
    assert out["teacher"] == str(saved)  # the avfm stage's self-supervised teacher, when it has run
    assert set(out["table"]) == {"teacher", "2d_control", "splat_student", "fit3d_student", "oracle_splat_student"}
    assert (tmp_path / "splat_distill" / "demo_quick_s0_features.png").is_file()
    assert Path(out["png"]).is_file() and json.loads(Path(out["json"]).read_text())["seeds"] == [0]


def test_lora_student_starts_identical_and_trains_only_adapters(worlds, tmp_path):
    images = rearrange(worlds[0].images[:2], "b h w c -> b c h w")

    class Linears(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = PatchConv()
            self.head = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))

        def forward(self, x):
            return rearrange(self.head(rearrange(self.conv(x), "b d h w -> b h w d")), "b h w d -> b d h w")

    base = Linears()
    before = base(images).detach()
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    lora = copy.deepcopy(base)
    adapters = add_lora(lora, rank=2)
    assert torch.allclose(lora(images), before, atol=1e-6)
    assert {n for n, p in lora.named_parameters() if p.requires_grad} == {
        "head.0.down.weight", "head.0.up.weight", "head.2.down.weight", "head.2.up.weight"}
    assert len(adapters) == 4 and all(p.requires_grad for p in adapters)
    cfg = SplatDistillConfig(steps=4, batch_size=2, lr=1e-2, warmup=1, lora_rank=2, lora_targets=(),
                             depth_source="oracle", ema_every=1, ema_momentum=0.9)
    d = SplatDistiller(copy.deepcopy(base), copy.deepcopy(base), worlds, cfg)
    fit(d, RunDir(tmp_path / "lora"), RunConfig(checkpoint_every=2, progress=False), cfg.steps)
    state = d.student.state_dict()
    assert all(torch.equal(state[k.replace("head.0.", "head.0.base.").replace("head.2.", "head.2.base.")], v)
               for k, v in frozen.items())
    assert not torch.allclose(d.student(images), before, atol=1e-5)
    teacher_state = d.teacher.state_dict()
    assert all(torch.equal(teacher_state[k], v) for k, v in state.items() if ".down." not in k and ".up." not in k)


def test_lora_on_named_layers_and_merging_back():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj, self.fc = nn.Linear(6, 18), nn.Linear(6, 6), nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(self.proj(self.qkv(x)[..., :6]))

    torch.manual_seed(0)
    block, x = Block(), torch.randn(5, 6)
    plain_state = {k: v.clone() for k, v in block.state_dict().items()}
    adapters = add_lora(block, rank=2, names=("qkv", "proj"))
    assert len(adapters) == 4 and type(block.fc) is nn.Linear
    for p in adapters:
        nn.init.normal_(p)
    adapted = block(x)
    merged = merge_lora(block)
    assert type(merged.qkv) is nn.Linear and torch.allclose(merged(x), adapted, atol=1e-5)
    assert set(merged.state_dict()) == set(plain_state)
    with pytest.raises(ValueError, match="lora_targets"):
        SplatDistiller(PatchConv(), PatchConv(), [], SplatDistillConfig(depth_source="oracle"))


def test_lora_reaches_layers_used_through_their_weight():
    """avfm's attention calls F.linear(x, qkv.weight, masked bias): the adapters must act (and train) there."""
    from avfm.teachers import ViTTeacher
    from avfm.vit import ViTConfig

    torch.manual_seed(0)
    vit, images = ViTTeacher(ViTConfig(16, 1, 2, patch_size=8)), torch.rand(1, 3, 16, 16)
    add_lora(vit, rank=2, names=("qkv", "proj"))
    for name, p in vit.named_parameters():
        if name.endswith("up.weight"):
            nn.init.normal_(p, std=0.1)
    out = vit(images).patches
    out.sum().backward()
    qkv = vit.vit.blocks[0].attn.qkv
    assert qkv.up.weight.grad is not None and qkv.up.weight.grad.abs().sum() > 0
    merged = merge_lora(copy.deepcopy(vit))
    assert torch.allclose(merged(images).patches, out, atol=1e-5)
