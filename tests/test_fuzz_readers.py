"""Every reader under property-based fuzzing (`lab.reliability.fuzz`): each damaged input
loads or raises one project error naming the file and the field; no other exception, no hang,
no allocation sized by a declared count. 200 cases per reader here (SCENE3D_FUZZ_EXAMPLES
overrides), 2,000 in the slow suite."""

import contextlib
import json
import os
import tracemalloc

import numpy as np
import pytest
import torch

from lab.reliability.fuzz import READERS, check_case, fuzz_reader, png_with_size, summarize, tiny_splits
from scene3d.checkpoint import load_checkpoint, save_checkpoint
from scene3d.data.formats import load_dataset, read_npy, save_blender
from scene3d.errors import CheckpointError, DataError
from scene3d.gaussians.ply import read_ply, write_ply
from scene3d.gaussians.scene import GaussianScene

EXAMPLES = int(os.environ.get("SCENE3D_FUZZ_EXAMPLES", "200"))


def _assert_fuzz_passes(reader: str, n: int) -> None:
    failures, counts = fuzz_reader(reader, n)
    assert counts["cases"] >= 0.95 * n, counts
    assert not failures, (summarize(failures), [f.message for f in failures[:5]])
    assert counts["loaded"] > 0 and counts["errors"] > 0, counts  # both paths exercised


@pytest.mark.parametrize("reader", sorted(READERS))
def test_fuzzed_inputs_load_or_raise_one_clear_project_error(reader):
    _assert_fuzz_passes(reader, EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("reader", sorted(READERS))
def test_fuzzed_inputs_2000_cases_per_reader(reader):
    _assert_fuzz_passes(reader, max(EXAMPLES, 2000))


# the checker itself ---------------------------------------------------------------------------
def test_check_case_flags_foreign_exceptions_malformed_errors_and_hangs():
    assert check_case(lambda: None).kind == "loaded"
    assert check_case(lambda: (_ for _ in ()).throw(DataError("f.json", "w", "bad"))).kind == "error"
    assert check_case(lambda: (_ for _ in ()).throw(DataError("f.json", None, "bad"))).kind == "malformed error"
    assert check_case(lambda: {}["x"]).kind == "KeyError"

    def hang():
        while True:
            pass

    assert check_case(hang, timeout_s=0.2).kind == "hang"


def test_error_messages_are_one_line():
    err = DataError("a.png", "image", "line one\nline two\r\n  three")
    assert "\n" not in str(err) and str(err) == "a.png: image: line one line two three"


# targeted cases ---------------------------------------------------------------------------------
@pytest.fixture()
def dataset(tmp_path):
    save_blender(tiny_splits(), tmp_path / "ds")
    return tmp_path / "ds"


@pytest.mark.parametrize("bad", ["../outside.png", "../../etc/passwd", "/etc/passwd", "train/../../outside.png",
                                 "link.png"])
def test_paths_leaving_the_dataset_folder_are_rejected(dataset, bad):
    (dataset.parent / "outside.png").write_bytes((dataset / "train" / "train_0000.png").read_bytes())
    (dataset / "link.png").symlink_to(dataset.parent / "outside.png")
    doc = json.loads((dataset / "transforms_train.json").read_text())
    doc["frames"][0]["file_path"] = bad
    (dataset / "transforms_train.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="outside the dataset folder") as info:
        load_dataset(dataset, "train")
    assert "transforms_train.json: frames[0].file_path" in str(info.value)


def _peak_mb(fn) -> float:
    tracemalloc.start()
    with contextlib.suppress(DataError):
        fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def test_huge_declared_sizes_allocate_nothing(tmp_path):
    scene = GaussianScene.from_points(torch.zeros(4, 3), torch.rand(4, 3), sh_degree=0)
    write_ply(tmp_path / "s.ply", scene)
    raw = (tmp_path / "s.ply").read_bytes().replace(b"element vertex 4", b"element vertex 4000000000000")
    (tmp_path / "s.ply").write_bytes(raw)
    with pytest.raises(DataError, match="truncated"):
        read_ply(tmp_path / "s.ply")
    assert _peak_mb(lambda: read_ply(tmp_path / "s.ply")) < 5

    with open(tmp_path / "d.npy", "wb") as f:  # header declares 8 TB of float32
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**20, 2**21)})
    with pytest.raises(DataError, match="shorter"):
        read_npy(tmp_path / "d.npy", "depth")
    assert _peak_mb(lambda: read_npy(tmp_path / "d.npy", "depth")) < 5

    save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(3)})
    raw = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "c.safetensors").write_bytes((2**62).to_bytes(8, "little") + raw[8:])
    with pytest.raises(CheckpointError, match="header"):
        load_checkpoint(tmp_path / "c.safetensors")


@pytest.mark.parametrize("size", [9000, 100_000])
def test_huge_declared_image_is_refused_before_decoding(dataset, size):
    png = dataset / "train" / "train_0000.png"
    png.write_bytes(png_with_size(png.read_bytes(), size, size))
    with pytest.raises(DataError, match="declares") as info:
        load_dataset(dataset, "train")
    assert "train_0000.png: frames[0].file_path" in str(info.value)


def test_pickled_npy_is_refused(dataset):
    depth = dataset / "train" / "train_0000_depth.npy"
    np.save(depth, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="dtype object"):
        load_dataset(dataset, "train")


def test_npy_with_an_unbalanced_header_is_one_clear_error(dataset):
    """Found by the 2,000-case fuzz: numpy's old-header parser raised tokenize.TokenError."""
    depth = dataset / "train" / "train_0000_depth.npy"
    raw = depth.read_bytes()
    depth.write_bytes(raw.replace(b"(8, 8)", b"(8, 8 "))
    with pytest.raises(DataError, match="cannot read .npy") as info:
        load_dataset(dataset, "train")
    assert "frames[0].depth_file_path" in str(info.value)


def test_big_endian_and_integer_depth_maps_load_as_float(dataset):
    depth = dataset / "train" / "train_0000_depth.npy"
    original = np.load(depth)
    np.save(depth, original.astype(">f4"))
    back = load_dataset(dataset, "train")
    assert back.depths.dtype == torch.float32 and torch.equal(back.depths[0], torch.from_numpy(original))


@pytest.mark.parametrize("config", ['{"model": ', "[1, 2]", '{"teacher": {"train": 3}, "optim": {}}',
                                    '{"model": "canvit_tiny"}', "\xff\xfe"])
def test_eval_run_dir_with_a_bad_config_is_one_clear_error(tmp_path, config):
    from avfm.evaluate import load_run

    (tmp_path / "config.json").write_bytes(config.encode("latin-1"))
    with pytest.raises(CheckpointError) as info:
        load_run(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value) and "\n" not in str(info.value)
