import pytest
import torch

from scene3d.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from scene3d.errors import CheckpointError
from scene3d.runs import RunDir


def _trained_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_training_state_round_trips_exactly(tmp_path):
    model, opt = _trained_state()
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "rng": torch.get_rng_state(),
             "step": 3, "history": (1.5, None, "x")}
    save_checkpoint(tmp_path / "c.safetensors", state, {"lr": 1e-2, "dims": [3, 4, 1]})
    loaded, config = load_checkpoint(tmp_path / "c.safetensors")
    assert config == {"lr": 1e-2, "dims": [3, 4, 1]}
    assert loaded["step"] == 3 and loaded["history"] == (1.5, None, "x")
    assert torch.equal(loaded["rng"], state["rng"])
    model2, opt2 = _trained_state()
    model2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optim"])
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(opt2.state_dict()["state"][0][key], value)
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "garbage", "huge_header", "plain_safetensors"])
def test_bad_checkpoints_raise_checkpoint_error(tmp_path, damage):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(100)}, {})
    raw = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "huge_header":
        path.write_bytes((2**62).to_bytes(8, "little") + raw[8:])
    else:
        from safetensors.torch import save_file

        save_file({"w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def fail(f):
        f.write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, fail, mode="w")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_run_dir_rotates_checkpoints_and_resumes(tmp_path):
    run = RunDir(tmp_path / "run", keep_checkpoints=2)
    for step in (10, 20, 30):
        run.save_checkpoint(step, {"w": torch.full((2,), float(step))}, config={"a": 1})
    assert [s for s, _ in run.checkpoints()] == [20, 30]
    state, config = run.load_latest()
    assert state["step"] == 30 and torch.equal(state["w"], torch.full((2,), 30.0)) and config == {"a": 1}
    run.log_scalars(1, {"loss": 0.5})
    run.close()
    assert (tmp_path / "run" / "scalars.jsonl").read_text().count("loss") == 1


def test_dict_keys_that_look_like_digits_but_are_not_ascii_stay_strings(tmp_path):
    """Int keys come back as ints; '¹' ("¹".isdigit() is True, int("¹") raises) stays a string."""
    save_checkpoint(tmp_path / "c.safetensors", {"groups": {3: 1, -2: 2, "¹": 3, "x7": 4}}, {})
    state, _ = load_checkpoint(tmp_path / "c.safetensors")
    assert state["groups"] == {3: 1, -2: 2, "¹": 3, "x7": 4}
