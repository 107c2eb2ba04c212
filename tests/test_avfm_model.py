"""CanViT: parameter counts against the paper, FLOP counter, pure steps, resizable canvas."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from avfm.flops import canvit_flops
from avfm.glimpse import Viewpoint, extract_glimpse
from avfm.model import CONFIGS, CanViT, State, build_model, count_params


def test_canvit_b_matches_paper_parameter_count():
    # CanViT paper, Table 12: CanViT-B 95.2M parameters, ViT-S-backbone variant 26.4M
    # (the heads to the teacher space are not counted there).
    with torch.device("meta"):
        b, s = CanViT(CONFIGS["canvit_b"]), CanViT(CONFIGS["canvit_s"])
    assert count_params(b) / 95.2e6 == pytest.approx(1.0, abs=0.01)
    assert count_params(s) / 26.4e6 == pytest.approx(1.0, abs=0.01)


def test_canvit_b_flops_close_to_paper():
    # Table 12: 15.8 GFLOPs per glimpse at the pretraining canvas (32 x 32); §4: one read/write
    # pair at 64 x 64 costs 2.8 GFLOPs.
    cfg = CONFIGS["canvit_b"]
    assert canvit_flops(cfg, 32)["total"] / 15.8e9 == pytest.approx(1.0, abs=0.03)
    pair = (canvit_flops(cfg, 64)["reads"] + canvit_flops(cfg, 64)["writes"]) / 3
    assert pair / 2.8e9 == pytest.approx(1.0, abs=0.03)


def test_analytic_flops_match_torch_counter():
    model = build_model("canvit_tiny").eval()
    state = model.init_state(2, canvas_grid=6)
    glimpse = torch.rand(2, 3, 32, 32)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.step(glimpse, Viewpoint.full(2), state, heads=True)
    assert counter.get_total_flops() == 2 * canvit_flops(model.cfg, 6, heads=True)["total"]


def test_step_is_pure_and_canvas_stays_fp32():
    torch.manual_seed(0)
    model = build_model("canvit_tiny").eval()
    scenes = torch.rand(2, 3, 64, 64)
    vp = Viewpoint(torch.tensor([[0.2, -0.3], [0.0, 0.0]]), torch.tensor([0.5, 1.0]))
    glimpse = extract_glimpse(scenes, vp, 32)
    state = model.init_state(2)
    before = state.canvas.clone()
    s1, o1 = model.step(glimpse, vp, state)
    s2, o2 = model.step(glimpse, vp, state)
    assert torch.equal(state.canvas, before)  # the input state is not mutated
    assert torch.equal(s1.canvas, s2.canvas) and torch.equal(s1.cls, s2.cls)
    assert torch.equal(o1.scene_patches, o2.scene_patches)
    assert s1.canvas.dtype == torch.float32
    assert s1.canvas.shape == (2, 4 + 64, 128) and s1.cls.shape == (2, 1, 96)
    assert o1.scene_patches.shape == (2, 64, 96) and o1.scene_cls.shape == (2, 96)
    assert not torch.equal(s1.canvas, state.canvas)  # the glimpse was written
    # batch elements are independent
    s_one, _ = model.step(glimpse[:1], vp[:1], State(state.canvas[:1], state.cls[:1]))
    assert torch.allclose(s_one.canvas, s1.canvas[:1], atol=1e-5)


def test_canvas_resizable_at_inference():
    model = build_model("canvit_tiny").eval()
    scenes = torch.rand(1, 3, 64, 64)
    for grid in (4, 8, 16):
        state, outs = model.rollout(
            scenes, [Viewpoint.full(1), Viewpoint.make(0.5, 0.5, 0.5)], model.init_state(1, grid)
        )
        assert outs[-1].scene_patches.shape == (1, grid * grid, 96)


def test_gradients_reach_every_parameter_over_two_steps():
    model = build_model("canvit_tiny")
    scenes = torch.rand(2, 3, 64, 64)
    _, outs = model.rollout(scenes, [Viewpoint.full(2), Viewpoint.make(-0.5, 0.5, 0.5, 2)])
    loss = sum(o.scene_patches.square().mean() + o.scene_cls.square().mean() for o in outs)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="end with a write"):
        build_model("canvit_tiny", write_after=(1, 3))
    with pytest.raises(KeyError, match="unknown CanViT"):
        build_model("canvit_xxl")


def test_no_learned_map_acts_on_the_canvas_side():
    # The only Linear layers taking canvas-width inputs are the reads' output projections (applied to
    # attention outputs headed for the local stream) and the pretraining head; none maps canvas -> canvas.
    model = build_model("canvit_tiny")
    dc = model.cfg.canvas_dim
    takes_canvas = sorted(
        name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.in_features == dc
    )
    assert takes_canvas == ["patch_head.1", "reads.0.out_proj", "reads.1.out_proj", "reads.2.out_proj"]
    assert not any(isinstance(m, torch.nn.Linear) and m.in_features == m.out_features == dc for m in model.modules())


def test_canvas_rope_and_vpe_stay_fp32_under_autocast():
    model = build_model("canvit_tiny")
    scenes = torch.rand(2, 3, 64, 64)
    vp = Viewpoint.make(0.25, -0.25, 0.5, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state, out = model.step(extract_glimpse(scenes, vp, 32), vp, model.init_state(2))
        assert model.vpe(vp).dtype == torch.float32
    assert state.canvas.dtype == torch.float32
    ref, _ = model.step(extract_glimpse(scenes, vp, 32), vp, model.init_state(2))
    assert torch.allclose(state.canvas, ref.canvas, atol=0.05, rtol=0.05)


def test_bench_skips_a_passive_forward_predicted_too_long():
    from lab.bench.avfm import passive_skip_reason

    assert passive_skip_reason(16, False, None, 900) is None
    assert passive_skip_reason(128, False, 500.0, 900) is None
    assert passive_skip_reason(128, False, 1200.0, 900) == "predicted 1200 s > passive_max_s 900 s"
    assert passive_skip_reason(64, True, None, 900) == "quick mode"
