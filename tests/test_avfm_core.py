"""Coordinates, glimpses, samplers, policies, SR-RoPE and Canvas Attention."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from avfm.attention import CanvasRead, CanvasWrite
from avfm.coords import flat_grid, glimpse_coords, grid_coords
from avfm.glimpse import (
    POLICIES,
    Viewpoint,
    build_policy,
    extract_glimpse,
    sample_rollout_length,
    sample_viewpoints,
)
from avfm.rope import apply_rope, apply_rope_reference, compute_rope, rope_periods


def test_grid_cell_centres():
    g = grid_coords(4, 2)
    assert g.shape == (4, 2, 2)
    assert torch.allclose(g[:, 0, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.allclose(g[0, :, 1], torch.tensor([-0.5, 0.5]))
    c = glimpse_coords(torch.tensor([[0.5, -0.5]]), torch.tensor([0.5]), 2)
    # the glimpse covers [0, 1] x [-1, 0]; its 2 x 2 cells sit at 0.25 / 0.75 and -0.75 / -0.25
    assert torch.allclose(c[0, :, 0, 0], torch.tensor([0.25, 0.75]))
    assert torch.allclose(c[0, 0, :, 1], torch.tensor([-0.75, -0.25]))


def test_full_glimpse_at_native_size_is_the_image():
    img = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    out = extract_glimpse(img, Viewpoint.full(2), 16)
    assert out.dtype == torch.float32
    assert torch.allclose(out, img.float(), atol=1e-6)


def test_full_glimpse_resamples_like_bilinear_resize():
    img = torch.rand(1, 3, 32, 32)
    out = extract_glimpse(img, Viewpoint.full(1), 8)
    ref = torch.nn.functional.interpolate(img, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(out, ref, atol=1e-5)


def test_known_pixel_lands_where_expected():
    # a 16 x 16 scene with one bright pixel at row 12, column 3; zoom on the 8 x 8 quadrant holding it
    img = torch.zeros(1, 1, 16, 16)
    img[0, 0, 12, 3] = 1.0
    vp = Viewpoint.make(0.5, -0.5, 0.5)  # rows 8..15, columns 0..7
    out = extract_glimpse(img, vp, 8)
    assert out[0, 0].argmax().item() == 4 * 8 + 3
    assert out[0, 0, 4, 3].item() == pytest.approx(1.0)
    assert out.sum().item() == pytest.approx(1.0)


def test_viewpoint_sampler_statistics():
    g = torch.Generator().manual_seed(0)
    vp = sample_viewpoints(200_000, g, s_min=0.05)
    s = vp.scale
    assert s.min() >= 0.05 - 1e-6 and s.max() <= 1.0
    # every glimpse inside the scene
    assert (vp.center.abs() <= (1 - s)[:, None] + 1e-6).all()
    # p(s) ~ (1 - s) on [0.05, 1]: E[s] = 0.05 + 0.95 / 3, P(s > 0.525) = 1/4
    assert s.mean().item() == pytest.approx(0.05 + 0.95 / 3, abs=5e-3)
    assert (s > 0.525).float().mean().item() == pytest.approx(0.25, abs=5e-3)
    # centre uniform in [-L, L]: c / L uniform on [-1, 1], variance 1/3
    half = 1 - s
    ratio = vp.center / half[:, None]
    assert ratio.var().item() == pytest.approx(1 / 3, abs=5e-3)


def test_rollout_length_distribution():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([sample_rollout_length(g) for _ in range(20_000)], dtype=torch.float)
    assert (lengths % 2 == 0).all() and lengths.min() == 2
    assert lengths.mean().item() == pytest.approx(4.0, abs=0.1)
    assert (lengths == 2).float().mean().item() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_yields_valid_viewpoints(name):
    kwargs = {"viewpoints": [(0.0, 0.0, 1.0)] * 6} if name == "explicit" else {}
    run = build_policy(name, **kwargs).start(3, 6, torch.Generator().manual_seed(0))
    for _ in range(6):
        vp = run.next(torch.rand(3, 8, 8))
        assert vp.center.shape == (3, 2) and vp.scale.shape == (3,)
        assert (vp.center.abs() <= (1 - vp.scale)[:, None] + 1e-6).all()


def test_c2f_and_f2c_cover_the_quadtree():
    vps = build_policy("c2f").viewpoints(2, 5, torch.Generator().manual_seed(0))
    assert [v.scale[0].item() for v in vps] == [1.0, 0.5, 0.5, 0.5, 0.5]
    level1 = torch.stack([v.center[0] for v in vps[1:]])
    assert torch.allclose(level1.abs(), torch.full((4, 2), 0.5))
    assert len({tuple(c.tolist()) for c in level1}) == 4
    f2c = build_policy("f2c").viewpoints(2, 5, torch.Generator().manual_seed(0))
    assert [v.scale[0].item() for v in f2c] == [0.5, 0.5, 0.5, 0.5, 1.0]


def test_f2c_starts_at_the_finest_level_the_budget_needs_as_the_reference():
    """10 glimpses need levels 0-2 (1 + 4 + 16 tiles): F2C takes 10 distinct level-2 tiles per scene (C2F reversed
    would end on the quadrants and the whole scene); 21 glimpses walk every level, finest first."""
    f2c = build_policy("f2c").viewpoints(3, 10, torch.Generator().manual_seed(0))
    assert all(torch.equal(v.scale, torch.full((3,), 0.25)) for v in f2c)
    for b in range(3):
        assert len({tuple(v.center[b].tolist()) for v in f2c}) == 10
    full = build_policy("f2c").viewpoints(1, 21, torch.Generator().manual_seed(0))
    assert [v.scale.item() for v in full] == [0.25] * 16 + [0.5] * 4 + [1.0]


def test_entropy_guided_visits_most_uncertain_tile_first():
    run = build_policy("eg_c2f").start(1, 3)
    assert run.next().scale.item() == 1.0
    unc = torch.zeros(1, 8, 8)
    unc[0, 6:, 0:2] = 1.0  # bottom-left quadrant is uncertain
    vp = run.next(unc)
    assert vp.center[0].tolist() == [0.5, -0.5] and vp.scale.item() == 0.5
    vp2 = run.next(unc)  # the next most uncertain is any other, but never the same tile twice
    assert vp2.center[0].tolist() != [0.5, -0.5]


def test_rope_periods_and_prefix_unrotated():
    p = rope_periods(32)
    assert p.shape == (8,) and p[0] == 1.0 and p[-1] == pytest.approx(100 ** (7 / 8))
    x = torch.randn(2, 3, 5 + 4, 32)
    rope = compute_rope(flat_grid(2)[None].expand(2, -1, -1), p)
    out = apply_rope(x, rope)
    assert torch.equal(out[:, :, :5], x[:, :, :5])
    assert not torch.allclose(out[:, :, 5:], x[:, :, 5:])
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation


def test_rope_relative_position_invariance():
    torch.manual_seed(0)
    p = rope_periods(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    pos_q, pos_k = torch.tensor([[[0.3, -0.2]]]), torch.tensor([[[-0.5, 0.7]]])
    shift = torch.tensor([0.41, -0.13])

    def score(pq, pk):
        return (apply_rope(q, compute_rope(pq, p)) * apply_rope(k, compute_rope(pk, p))).sum()

    assert score(pos_q, pos_k).item() == pytest.approx(score(pos_q + shift, pos_k + shift).item(), abs=1e-5)
    assert score(pos_q, pos_k).item() != pytest.approx(score(pos_q, pos_k + shift).item(), abs=1e-3)


def test_rope_layout_y_then_x_halves():
    p = rope_periods(8)  # n = 2
    rope = compute_rope(torch.tensor([[[0.25, 0.0]]]), p)  # y only
    angles_y = 2 * math.pi * 0.25 / p
    assert torch.allclose(rope.sin[0, 0, 0], torch.cat([angles_y.sin(), torch.zeros(2)]), atol=1e-6)


def test_fast_rope_matches_reference_outputs_and_gradients():
    torch.manual_seed(0)
    p = rope_periods(16)
    rope = compute_rope(torch.rand(2, 6, 2) * 2 - 1, p)
    x = torch.randn(2, 3, 4 + 6, 16, dtype=torch.float64, requires_grad=True)
    fast, ref = apply_rope(x, rope), apply_rope_reference(x, rope)
    assert torch.allclose(fast, ref, atol=1e-6)
    w = torch.randn_like(fast)
    (g_fast,) = torch.autograd.grad((fast * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    assert torch.allclose(g_fast, g_ref, atol=1e-6)


def test_canvas_attention_shapes_and_no_canvas_projection():
    read, write = CanvasRead(24, 32, 2), CanvasWrite(24, 32, 2)
    local, canvas = torch.randn(2, 3 + 4, 24), torch.randn(2, 1 + 16, 32)
    p = rope_periods(16)
    local_rope = compute_rope(flat_grid(2)[None].expand(2, -1, -1), p)
    canvas_rope = compute_rope(flat_grid(4)[None], p)
    assert read(local, canvas, local_rope, canvas_rope).shape == local.shape
    assert write(canvas, local, canvas_rope, local_rope).shape == canvas.shape
    # learned matrices only on the local side: read has q (24 -> 32) and out (32 -> 24); write k, v
    shapes = {n: tuple(m.weight.shape) for n, m in read.named_modules() if isinstance(m, torch.nn.Linear)}
    assert shapes == {"q_proj": (32, 24), "out_proj": (24, 32)}
    shapes = {n: tuple(m.weight.shape) for n, m in write.named_modules() if isinstance(m, torch.nn.Linear)}
    assert shapes == {"k_proj": (32, 24), "v_proj": (32, 24)}
    # a write with all values zero leaves the canvas untouched: no output projection, no bias on top
    with torch.no_grad():
        write.v_proj.weight.zero_()
        write.v_proj.bias.zero_()
    assert torch.equal(write(canvas, local, canvas_rope, local_rope), torch.zeros_like(canvas))


@settings(max_examples=40, deadline=None)
@given(
    cy=st.floats(-0.5, 0.5),
    cx=st.floats(-0.5, 0.5),
    s=st.floats(0.05, 0.45),
    a=st.floats(-2, 2),
    b=st.floats(-2, 2),
)
def test_glimpse_of_a_linear_ramp_is_exact(cy, cx, s, a, b):
    # bilinear interpolation reproduces a linear function exactly between pixel centres, so the
    # glimpse of I(y, x) = a*y + b*x must equal the function at the glimpse's cell centres
    n = 32
    pix = grid_coords(n)  # scene coordinates of the pixel centres
    scene = (a * pix[..., 0] + b * pix[..., 1])[None, None]
    vp = Viewpoint(torch.tensor([[cy, cx]]), torch.tensor([s]))
    out = extract_glimpse(scene, vp, 8)[0, 0]
    cells = glimpse_coords(vp.center, vp.scale, 8)[0]
    assert torch.allclose(out, a * cells[..., 0] + b * cells[..., 1], atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=6, max_size=6))
def test_rope_scores_depend_only_on_offsets(v):
    torch.manual_seed(0)
    p = rope_periods(32)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)
    pq, pk, shift = torch.tensor([[v[0:2]]]), torch.tensor([[v[2:4]]]), torch.tensor(v[4:6])

    def score(a, b):
        return (apply_rope(q, compute_rope(a, p)) * apply_rope(k, compute_rope(b, p))).sum()

    assert score(pq, pk).item() == pytest.approx(score(pq + shift, pk + shift).item(), abs=1e-4)
