"""The four field architectures behind one protocol: gradients, encodings, presets, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from scene3d.errors import CheckpointError
from scene3d.fields import FIELDS, build_field, field_config, load_field, save_field, trunc_exp
from scene3d.fields.encoding import spherical_harmonics, trilinear_interpolate
from scene3d.fields.hashgrid import HashEncoding, hash_encode_reference

# Small sizes so every test runs in well under a second per architecture.
TINY = {
    "mlp": {"width": 32, "depth": 3, "skips": (1,)},
    "tensorf": {"resolution_init": 12, "resolution_final": 20, "upsample_steps": (2, 4)},
    "grid": {"resolution": 12},
    "hashgrid": {"n_levels": 4, "log2_table_size": 10, "finest_resolution": 64.0},
}


def tiny_field(name: str, **overrides):
    torch.manual_seed(0)
    return build_field(name, **{**TINY[name], **overrides})


def random_inputs(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g) * 1.8 - 0.9
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return x, dirs


def test_registry_has_the_four_architectures():
    assert set(FIELDS) == {"mlp", "tensorf", "grid", "hashgrid"}
    with pytest.raises(KeyError, match="unknown field"):
        build_field("nerfacto")
    with pytest.raises(ValueError, match="preset"):
        build_field("mlp", preset="huge")


def test_trunc_exp_forward_is_exp_and_backward_is_clamped():
    x = torch.tensor([-20.0, -15.0, 0.0, 3.0, 15.0, 20.0], dtype=torch.float64, requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x.detach()))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.exp(x.detach().clamp(-15, 15)))
    assert x.grad[-1] == x.grad[-2] < torch.exp(torch.tensor(20.0, dtype=torch.float64))


def test_density_clamp_bounds_the_preactivation():
    field = tiny_field("mlp", density_clamp=(-2.0, 7.0))
    with torch.no_grad():
        field.density_head.bias.fill_(50.0)
    x, _ = random_inputs()
    sigma = field.density(x)
    torch.testing.assert_close(sigma, torch.full_like(sigma, math.exp(7.0)))


@pytest.mark.parametrize("head", ["native", "pvd"])
@pytest.mark.parametrize("name", sorted(FIELDS))
def test_gradients_reach_every_parameter(name, head):
    field = tiny_field(name, head=head)
    x, dirs = random_inputs(2048)
    sigma, rgb = field.query(x, dirs)
    assert sigma.shape == (2048,) and rgb.shape == (2048, 3)
    assert (sigma >= 0).all() and (rgb >= 0).all() and (rgb <= 1).all()
    ((sigma - 1).square().mean() + (rgb - 0.3).square().mean() + field.regularization()).backward()
    for pname, p in field.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}.{pname} has a zero gradient"


@pytest.mark.parametrize("head", ["native", "pvd"])
@pytest.mark.parametrize("name", sorted(FIELDS))
def test_protocol_split_matches_query(name, head):
    field = tiny_field(name, color_dim=5, head=head)
    x, dirs = random_inputs()
    features = field.embed(x)
    sigma_preact, rgb = field.decode(features, dirs)
    sigma, rgb_q = field.query(x, dirs)
    assert rgb.shape == (256, 5)
    torch.testing.assert_close(sigma, field.activate(sigma_preact))
    torch.testing.assert_close(rgb, rgb_q)
    torch.testing.assert_close(field.density(x), sigma)
    torch.testing.assert_close(field.decode_density(features), sigma_preact)
    outside = torch.tensor([[1.5, 0.0, 0.0], [0.0, -1.2, 0.3]])
    assert (field.density(outside) == 0).all()


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_pvd_head_emits_the_clipped_16d_interface_and_trains_every_parameter_once(name):
    field = tiny_field(name, head="pvd")
    x, dirs = random_inputs()
    features = field.embed(x)
    interface = field.interface(features)
    grouped = [id(p) for group in field.param_groups() for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in field.parameters())  # each parameter in one group
    if name == "grid":  # Plenoxels: no interface, no shared decoder (the authors' "tensors")
        assert interface is None and not any(k.startswith("head.") for k in field.state_dict())
        return
    assert interface.shape == (256, 16) and tiny_field(name).interface(features) is None
    raw, rgb = field.decode(features, dirs)
    torch.testing.assert_close(interface[:, 0], raw.clamp(-2, 7))
    torch.testing.assert_close(rgb, field.head.color(interface, dirs))
    big = field.activate(torch.full((3,), 50.0))  # the activation clips the log density to 7 as well
    torch.testing.assert_close(big, torch.full((3,), math.exp(7.0)))
    assert {k.split(".")[1] for k in field.state_dict() if k.startswith("head.")} == (
        {"color_net"} if name == "tensorf" else {"sigma_net", "color_net"})
    with pytest.raises(ValueError, match="head must be"):
        tiny_field(name, head="shared")


def test_paper_presets_use_the_papers_numbers():
    nerf = field_config("mlp", "paper")
    assert (nerf.n_freq_xyz, nerf.n_freq_dir, nerf.depth, nerf.width, nerf.skips) == (10, 4, 8, 256, (4,))
    tensorf = field_config("tensorf", "paper")
    assert (tensorf.density_components, tensorf.appearance_components) == (16, 48)
    assert (tensorf.resolution_init, tensorf.resolution_final) == (128, 300)
    assert tensorf.resolution_schedule()[-1] == 300
    grid = field_config("grid", "paper")
    assert (grid.resolution, grid.sh_degree) == (128, 2)
    ngp = field_config("hashgrid", "paper", aabb=(-1.5, -1.5, -1.5, 1.5, 1.5, 1.5))
    assert (ngp.n_levels, ngp.features_per_level, ngp.log2_table_size, ngp.base_resolution) == (16, 2, 19, 16)
    assert ngp.finest_resolution == 2048 * 1.5
    levels = ngp.level_resolutions()
    assert levels[0] == 16 and abs(levels[-1] - 3072) <= 1
    # NeRF's MLP has about 0.6M parameters (8 x 256 trunk with the skip, heads).
    assert 5.5e5 < build_field("mlp", "paper").parameter_count() < 6.5e5


def test_hash_encoding_matches_the_loop_over_corners_reference():
    # 4 levels of 8..101 vertices on a 2^12 table: the first levels are dense, the last hashed.
    enc = HashEncoding([8, 16, 40, 101], features_per_level=3, log2_table_size=12, init_scale=1.0)
    assert 0 < enc.n_dense < 4
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.rand(500, 3, generator=g, dtype=torch.float64), torch.eye(3, dtype=torch.float64),
                   torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)])
    enc = enc.double()
    weights = torch.randn(len(x), enc.out_dim, generator=g, dtype=torch.float64)
    fast = enc(x)
    (fast * weights).sum().backward()
    grad_fast = enc.table.grad.clone()
    enc.table.grad = None
    slow = hash_encode_reference(enc, x)
    (slow * weights).sum().backward()
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(grad_fast, enc.table.grad)


def test_trilinear_interpolation_matches_grid_sample():
    g = torch.Generator().manual_seed(0)
    vol = torch.randn(1, 4, 5, 6, 7, generator=g)          # [1, C, Z, Y, X]
    u = torch.rand(300, 3, generator=g)
    ref = torch.nn.functional.grid_sample(vol, (u * 2 - 1).reshape(1, 300, 1, 1, 3), align_corners=True)
    table = vol[0].permute(1, 2, 3, 0).reshape(-1, 4)
    torch.testing.assert_close(trilinear_interpolate(table, (7, 6, 5), u), ref.reshape(4, 300).T)


def test_spherical_harmonics_are_orthonormal():
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(400_000, 3, generator=g, dtype=torch.float64), dim=-1)
    basis = spherical_harmonics(dirs, 3)
    gram = 4 * math.pi * basis.T @ basis / len(dirs)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_sparsity_prior_is_off_by_default_and_empties_free_space(name):
    x, _ = random_inputs(2048, seed=1)
    assert tiny_field(name).regularization().item() == pytest.approx(
        tiny_field(name, sparsity=0.0).regularization().item())
    field = tiny_field(name, sparsity=1.0, sparsity_samples=512)
    with_prior = field.regularization() - tiny_field(name).regularization()
    assert with_prior.item() > 0
    before = field.density(x).mean().item()
    optimizer = torch.optim.Adam(field.parameters(), lr=field.config.lr)
    for _ in range(20):
        optimizer.zero_grad()
        field.sparsity_loss().backward()
        optimizer.step()
    assert field.density(x).mean().item() < 0.5 * before


def test_tensorf_upsampling_grows_the_grid_and_keeps_the_function():
    field = tiny_field("tensorf")
    x, dirs = random_inputs(512)
    before = field.query(x, dirs)
    assert not field.on_train_step(1)
    assert field.on_train_step(2)
    assert min(field.resolution) > 12
    after = field.query(x, dirs)
    torch.testing.assert_close(after[0], before[0], rtol=0.05, atol=0.05)
    torch.testing.assert_close(after[1], before[1], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("head", ["native", "pvd"])
@pytest.mark.parametrize("name", sorted(FIELDS))
def test_checkpoint_round_trip_is_exact(name, head, tmp_path):
    field = tiny_field(name, aabb=(-2.0, -1.0, 0.0, 2.0, 1.0, 1.5), density_clamp=(-2.0, 7.0), head=head)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.01 * torch.randn_like(p))
    if name == "tensorf":
        field.on_train_step(2)  # a checkpoint taken after upsampling must load into a fresh field
    path = save_field(field, tmp_path / "f.safetensors")
    loaded = load_field(path)
    assert type(loaded) is type(field) and loaded.config == field.config
    for (k, a), (_, b) in zip(field.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x, dirs = random_inputs()
    x = x * torch.tensor([2.0, 1.0, 0.75]) + torch.tensor([0.0, 0.0, 0.75])
    for a, b in zip(field.query(x, dirs), loaded.query(x, dirs), strict=True):
        assert torch.equal(a, b)


def test_bad_checkpoints_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_field(tmp_path / "missing.safetensors")
    path = save_field(tiny_field("hashgrid"), tmp_path / "f.safetensors")
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_field(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_field(garbage)
    # A valid file whose weights do not fit the config it names.
    from scene3d.checkpoint import save_checkpoint
    from scene3d.fields.base import field_spec

    mismatch = tmp_path / "mismatch.safetensors"
    save_checkpoint(mismatch, {"field": tiny_field("mlp").state_dict()}, field_spec(tiny_field("hashgrid")))
    with pytest.raises(CheckpointError, match="does not fit hashgrid"):
        load_field(mismatch)
    unknown = tmp_path / "unknown.safetensors"
    save_checkpoint(unknown, {"field": {}}, {"field": "nerfacto", "config": {}})
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        load_field(unknown)


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_architecture_accepts_an_empty_batch(name):
    """A chunk of rays with no candidate sample (all background) reaches the field as zero points."""
    field = tiny_field(name)
    for shape in ((0,), (0, 5), (3, 0)):
        sigma, rgb = field.query(torch.zeros(*shape, 3), torch.zeros(*shape, 3))
        assert sigma.shape == shape and rgb.shape == (*shape, field.config.color_dim)


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("size", [64, 384, pytest.param(1024, marks=pytest.mark.slow)])
def test_every_architecture_renders_an_all_background_view_with_occupancy(name, size):
    """With an occupancy grid that is empty around the camera's view, whole chunks skip the field."""
    from scene3d.cameras import Cameras, look_at
    from scene3d.render import OccupancyGrid, render_image

    field = tiny_field(name)
    grid = OccupancyGrid(field.aabb)
    grid.bitfield.zero_()
    grid.bitfield[0, 0, 0] = True                       # one occupied corner cell: most chunks are empty
    camera = Cameras.from_fov(look_at(torch.tensor([[0.0, -3.0, 0.0]]), torch.zeros(3)), math.radians(30),
                              size, size)
    out = render_image(field, camera, n_samples=4, occupancy=grid, background=(1.0, 1.0, 1.0))
    assert out["rgb"].shape == (1, size, size, field.config.color_dim)
    assert torch.isfinite(out["rgb"]).all()
    torch.testing.assert_close(out["rgb"][0, size // 2, size // 2], torch.ones(field.config.color_dim))
