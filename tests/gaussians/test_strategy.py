import torch

from scene3d.gaussians import rasterize
from scene3d.gaussians.strategy import DensifyStrategy, DensityController
from tests.gaussians.helpers import random_scene, two_cameras


def _setup(n=200):
    scene = random_scene(n, sh_degree=1)
    opt = torch.optim.Adam(scene.param_groups(), eps=1e-15)
    return scene, opt


def _train_step(scene, opt, ctrl, step, cams):
    out = rasterize(scene, cams)
    ctrl.before_backward(out)
    (out.colors - 0.3).abs().mean().backward()
    opt.step()
    info = ctrl.after_backward(step, out)
    opt.zero_grad(set_to_none=True)
    return info


def test_defaults_are_the_papers():
    cfg = DensifyStrategy()
    assert (cfg.grow_grad2d, cfg.prune_opacity, cfg.refine_start, cfg.refine_stop, cfg.refine_every,
            cfg.reset_every, cfg.grow_scale3d, cfg.split_shrink) == (0.0002, 0.005, 500, 15_000, 100, 3000, 0.01, 1.6)


def test_clone_split_prune_keep_optimizer_consistent():
    scene, opt = _setup()
    cams = two_cameras()
    cfg = DensifyStrategy(grow_grad2d=0.0, refine_start=0, refine_every=2, grow_scale3d=0.15, reset_every=1000)
    ctrl = DensityController(cfg, scene, opt, scene_extent=1.0)
    scene.params["opacity_logits"].data[:10] = -10.0  # below the pruning threshold
    n0 = len(scene)
    seen = scene.params["opacity_logits"].grad is None
    _train_step(scene, opt, ctrl, 1, cams)
    info = _train_step(scene, opt, ctrl, 2, cams)
    assert seen and info["clone"] > 0 and info["split"] > 0 and info["prune"] >= 10
    assert len(scene) == n0 + info["clone"] + info["split"] - info["prune"]
    for group in opt.param_groups:
        p = group["params"][0]
        assert p is scene.params[group["name"]] and len(p) == len(scene)
        assert opt.state[p]["exp_avg"].shape == p.shape
    _train_step(scene, opt, ctrl, 3, cams)  # the optimizer still steps after surgery
    assert torch.isfinite(scene.means).all()


def test_split_children_are_smaller_and_near_parent():
    scene, opt = _setup(20)
    ctrl = DensityController(DensifyStrategy(), scene, opt, scene_extent=1.0)
    parent_mean, parent_scale = scene.means[0].detach().clone(), scene.scales[0].detach().clone()
    mask = torch.zeros(20, dtype=torch.bool)
    mask[0] = True
    ctrl._split(mask)
    assert len(scene) == 21
    children = scene.scales[-2:]
    torch.testing.assert_close(children, (parent_scale / 1.6).expand(2, 3))
    assert ((scene.means[-2:] - parent_mean).norm(dim=-1) < 6 * parent_scale.max()).all()


def test_opacity_reset_caps_opacity():
    scene, opt = _setup()
    ctrl = DensityController(DensifyStrategy(), scene, opt, scene_extent=1.0)
    ctrl.reset_opacity()
    assert scene.opacities.max() <= 0.01 + 1e-6
