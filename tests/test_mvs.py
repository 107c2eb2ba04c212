import dataclasses
import math

import pytest
import torch

from scene3d.distill.splat.data import make_world_views
from scene3d.distill.splat.mvs import (
    MVSConfig,
    MVSDepthNet,
    MVSTrainer,
    evaluate_mvs,
    predict_depth,
    train_mvs,
    warp_to_reference,
)
from scene3d.distill.splat.stereo import (
    block_matching,
    disparity_metrics,
    load_motorcycle,
    predictor_disparity,
    rectified_cameras,
)
from scene3d.runs import RunDir
from scene3d.train import RunConfig

BM_EPE_MAX = 2.0  # px at 1/4 scale; SAD 7x7 measures 1.29, a vertically flipped right image 5.5
TINY = MVSConfig(width=8, refine_width=8, n_planes=8, steps=6, batch_size=1, backend="torch")


@pytest.fixture(scope="module")
def worlds():
    return make_world_views(range(2), n_views=8, size=32)


def test_plane_sweep_warps_a_fronto_parallel_plane_exactly():
    cams = rectified_cameras(12, 20, focal=30.0, baseline=0.5)  # disparity 3 px at z = 5
    src = torch.rand(1, 4, 12, 20)
    warped = warp_to_reference(src, cams.K[:1], cams.c2w[:1], cams.K[1:], cams.c2w[1:],
                               torch.tensor([1 / 5.0, 1 / 2.5]), (12, 20))
    assert warped.shape == (1, 4, 2, 12, 20)
    torch.testing.assert_close(warped[:, :, 0, :, 3:], src[..., :-3])  # the plane at z = 5: a 3-pixel shift
    assert warped[:, :, 0, :, :3].abs().max() < 1e-5  # outside the source
    torch.testing.assert_close(warped[:, :, 1, :, 6:], src[..., :-6])  # z = 2.5: 6 pixels


def test_plane_sweep_at_half_resolution_keeps_pixel_centres():
    cams = rectified_cameras(16, 24, focal=24.0, baseline=1.0)  # z = 6: 4 px at full, 2 px at half resolution
    src = torch.rand(1, 2, 8, 12)
    warped = warp_to_reference(src, cams.K[:1], cams.c2w[:1], cams.K[1:], cams.c2w[1:], torch.tensor([1 / 6.0]),
                               (16, 24))
    torch.testing.assert_close(warped[:, :, 0, :, 2:], src[..., :-2])


def test_bad_inputs_are_one_line_value_errors(worlds):
    with pytest.raises(ValueError, match="far"):
        MVSConfig(near=3.0, far=2.0)
    net = MVSDepthNet(TINY)
    with pytest.raises(ValueError, match="at least 2 views"):
        predict_depth(net, worlds[0].images[:1], worlds[0].cameras[:1])
    with pytest.raises(ValueError, match="images"):
        predict_depth(net, worlds[0].images[:2, :, :, :2], worlds[0].cameras[:2])


def test_prediction_shapes_and_ranges(worlds):
    depth, opacity = predict_depth(MVSDepthNet(TINY), worlds[0].images[:3], worlds[0].cameras[:3])
    assert depth.shape == opacity.shape == (3, 32, 32)
    assert (depth >= TINY.near - 1e-4).all() and (depth <= TINY.far + 1e-4).all()
    assert ((opacity > 0) & (opacity < 1)).all()


def test_photometric_loss_reaches_every_part_of_the_net(worlds):
    trainer = MVSTrainer(worlds, TINY)
    loss, logs = trainer.step_loss(trainer.sample(1))
    loss.backward()
    assert math.isfinite(loss.item()) and logs["photometric"] > 0
    for name in ("stem", "down", "cost_net", "refine", "log_temperature"):
        grads = [p.grad for n, p in trainer.net.named_parameters() if n.startswith(name)]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name


def test_trainer_resumes_exactly_in_its_run_folder(worlds, tmp_path):
    straight, straight_losses = train_mvs(worlds, TINY)
    loop = RunConfig(checkpoint_every=2, eval_every=0, progress=False)
    train_mvs(worlds, TINY, RunDir(tmp_path / "mvs"), dataclasses.replace(loop, stop_after=3))
    resumed, losses = train_mvs(worlds, TINY, RunDir(tmp_path / "mvs"), loop)
    assert len(losses) == 6 and losses == straight_losses
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(),
                                                  strict=True))


def test_evaluation_reports_depth_and_opacity_metrics(worlds):
    out = evaluate_mvs(MVSDepthNet(TINY), worlds, n_tuples=2, seed=0)
    assert {"abs_rel", "delta_1", "raw_abs_rel", "opacity_iou"} <= set(out)
    assert all(math.isfinite(v) for v in out.values())


@pytest.mark.parametrize("cost", ["sad", "ncc"])
def test_block_matching_recovers_a_shifted_random_texture_exactly(cost):
    d, w = 5, 40
    big = torch.rand(24, w + d, 3, generator=torch.Generator().manual_seed(0))
    left, right = big[:, :w], big[:, d:d + w]  # left pixel x = right pixel x - d
    disp = block_matching(left, right, 0, 9, window=5, cost=cost)
    assert (disp[:, d + 2:] == d).all()


def test_motorcycle_pair_and_block_matching_baseline():
    pair = load_motorcycle(downscale=4)
    h, w = pair.left.shape[:2]
    assert pair.right.shape == (h, w, 3) and h % 2 == 0 and w % 2 == 0
    assert pair.valid.float().mean() > 0.5 and (pair.disparity[pair.valid] > 0).all()
    lo, hi = int(pair.disparity[pair.valid].min()), math.ceil(pair.disparity[pair.valid].max())
    bm = disparity_metrics(block_matching(pair.left, pair.right, lo, hi), pair.disparity, pair.valid, 4)
    shuffled = disparity_metrics(block_matching(pair.left, pair.right.flip(0), lo, hi), pair.disparity, pair.valid, 4)
    assert bm["epe"] < BM_EPE_MAX < shuffled["epe"]  # a wrong convention or a broken matcher fails


@pytest.mark.slow
def test_trained_predictor_meets_the_held_out_targets():
    net, losses = train_mvs(make_world_views(range(16), n_views=24, size=64), MVSConfig(steps=300))
    out = evaluate_mvs(net, make_world_views(range(20000, 20004), n_views=24, size=64), n_tuples=16, seed=0)
    assert out["abs_rel"] < 0.1 and out["delta_1"] > 0.9
    pair = load_motorcycle(downscale=4)
    pred, raw = predictor_disparity(net, pair, 1.0, 15.0)
    assert disparity_metrics(raw, pair.disparity, pair.valid)["epe"] < 2.5  # learned features match real photos
    # The predictor itself misses the target (3.35 +- 0.13 px over 3 seeds at 400 steps, 3.54 here at 300; block
    # matching 1.00-1.29 px, the constant median disparity 3.54 px: docs/splat_distill.md); a regression bound.
    assert disparity_metrics(pred, pair.disparity, pair.valid)["epe"] < 4.5
