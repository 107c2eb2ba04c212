"""`avfm.fast_canvas` against the reference modules of `avfm.attention` (`CanViT(fast_canvas=False)`): same
rollout outputs with and without autograd, same gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from avfm.glimpse import sample_viewpoints
from avfm.model import build_model


def _pair():
    torch.manual_seed(0)
    fast = build_model("canvit_tiny", canvas_grid=6)
    for p in fast.parameters():  # LayerScale 1e-5 would hide most of the blocks' part: give them weight
        if p.ndim == 1 and float(p.detach().abs().max()) < 1e-3:
            p.data.uniform_(0.1, 0.5)
    ref = copy.deepcopy(fast)
    ref.fast_canvas = False
    return fast, ref


def _rollout(model, scenes, steps=2, grid=6):
    g = torch.Generator().manual_seed(1)
    state, outs = model.init_state(scenes.shape[0], grid), []
    for _ in range(steps):
        vp = sample_viewpoints(scenes.shape[0], g)
        state, out = model.step(model.glimpse(scenes, vp), vp, state)
        outs.append(out)
    return state, outs


@pytest.mark.parametrize("grid", [6, 9])
def test_inference_path_equals_reference(grid):
    fast, ref = _pair()
    scenes = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        (s_fast, o_fast), (s_ref, o_ref) = _rollout(fast, scenes, grid=grid), _rollout(ref, scenes, grid=grid)
    torch.testing.assert_close(s_fast.canvas, s_ref.canvas, atol=1e-4, rtol=0)
    torch.testing.assert_close(s_fast.cls, s_ref.cls, atol=1e-4, rtol=0)
    for a, b in zip(o_fast, o_ref, strict=True):
        torch.testing.assert_close(a.local_patches, b.local_patches, atol=1e-4, rtol=0)
        torch.testing.assert_close(a.scene_patches, b.scene_patches, atol=1e-4, rtol=0)


def test_training_path_equals_reference_with_gradients():
    fast, ref = _pair()
    scenes = torch.rand(2, 3, 64, 64)
    target = torch.randn(2, 36, fast.cfg.teacher_dim)
    for model in (fast, ref):
        state, outs = _rollout(model, scenes)
        loss = sum((o.scene_patches - target).pow(2).mean() + o.scene_cls.pow(2).mean() for o in outs)
        loss = loss + state.canvas.square().mean()
        loss.backward()
    checked = 0
    for (name, p), q in zip(fast.named_parameters(), ref.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-3, msg=name)
            checked += int(p.grad.abs().max() > 0)
    assert checked > 0.9 * len(list(fast.parameters()))


def test_benchmark_times_both_paths_side_by_side():
    from lab.bench.avfm import fast_vs_reference

    model = build_model("canvit_tiny").eval()
    row = fast_vs_reference(model, 8, warmup=0, iters=1)
    assert row["fast_ms"] > 0 and row["reference_ms"] > 0 and row["max_abs_diff"] <= 1e-4
    assert model.fast_canvas  # the model is left on its fast path
