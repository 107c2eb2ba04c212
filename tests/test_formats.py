import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from scene3d.data.dataset import make_multiview_dataset
from scene3d.data.formats import load_dataset, save_blender, save_nerfstudio
from scene3d.data.synthetic import make_world
from scene3d.errors import DataError


@pytest.fixture(scope="module")
def splits():
    return make_multiview_dataset(make_world(2), n_train=4, n_val=2, n_test=3, width=24, height=16, seed=1)


@pytest.fixture(params=["blender", "nerfstudio"])
def written(request, splits, tmp_path):
    save = save_blender if request.param == "blender" else save_nerfstudio
    save(splits, tmp_path)
    transforms = tmp_path / ("transforms_train.json" if request.param == "blender" else "transforms.json")
    return request.param, tmp_path, transforms


def test_round_trip_is_exact(written, splits):
    _, root, _ = written
    for split, ds in splits.items():
        back = load_dataset(root, split)
        assert back.names == ds.names
        torch.testing.assert_close(back.images, torch.round(ds.images * 255) / 255, atol=0, rtol=0)
        torch.testing.assert_close(back.cameras.c2w, ds.cameras.c2w, atol=1e-6, rtol=0)
        torch.testing.assert_close(back.cameras.K, ds.cameras.K)
        assert torch.equal(back.depths, ds.depths) and torch.equal(back.normals, ds.normals)
        assert torch.equal(back.semantic, ds.semantic) and torch.equal(back.instance, ds.instance)
        assert torch.equal(back.masks, ds.masks)
        torch.testing.assert_close(back.aabb, ds.aabb)


def test_downscale(written, splits):
    _, root, _ = written
    half = load_dataset(root, "train", downscale=2)
    assert half.images.shape == (4, 8, 12, 3) and half.depths.shape == (4, 8, 12)
    torch.testing.assert_close(half.cameras.K[:, :2], splits["train"].cameras.K[:, :2] / 2)
    ref = torch.round(splits["train"].images * 255) / 255
    torch.testing.assert_close(half.images[:, 0, 0], ref[:, :2, :2].mean((1, 2)))


def test_blender_file_without_intrinsics_uses_camera_angle(splits, tmp_path):
    save_blender(splits, tmp_path)
    doc = json.loads((tmp_path / "transforms_train.json").read_text())
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        doc.pop(key)
    (tmp_path / "transforms_train.json").write_text(json.dumps(doc))
    torch.testing.assert_close(load_dataset(tmp_path, "train").cameras.K, splits["train"].cameras.K)


def test_rgba_images_composite_over_background(tmp_path, splits):
    save_blender({"train": splits["train"]}, tmp_path)
    img = iio.imread(tmp_path / "train" / "train_0000.png")
    rgba = np.concatenate([img, np.zeros_like(img[..., :1])], -1)
    rgba[:8, :, 3] = 255
    iio.imwrite(tmp_path / "train" / "train_0000.png", rgba)
    doc = json.loads((tmp_path / "transforms_train.json").read_text())
    for frame in doc["frames"]:
        frame.pop("mask_path")
    doc["background"] = [0.0, 0.0, 0.0]
    (tmp_path / "transforms_train.json").write_text(json.dumps(doc))
    ds = load_dataset(tmp_path, "train")
    assert ds.images[0, 8:].abs().max() == 0 and ds.images[0, :8].max() > 0


def _edit(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _set_file_path(doc, i, value):
    old = doc["frames"][i]["file_path"]
    doc["frames"][i]["file_path"] = value
    if "train_filenames" in doc:
        doc["train_filenames"] = [value if n == old else n for n in doc["train_filenames"]]


CASES = {
    "malformed_json": (lambda t, r: t.write_text('{"frames": [}'), None, "malformed JSON"),
    "not_an_object": (lambda t, r: t.write_text("[1, 2]"), None, "JSON object"),
    "no_frames": (lambda t, r: _edit(t, lambda d: d.pop("frames")), "frames", "non-empty list"),
    "missing_matrix": (lambda t, r: _edit(t, lambda d: d["frames"][1].pop("transform_matrix")),
                       "frames[1].transform_matrix", "missing"),
    "matrix_shape": (lambda t, r: _edit(t, lambda d: d["frames"][0].__setitem__("transform_matrix", [[1, 2], [3, 4]])),
                     "frames[0].transform_matrix", "4x4"),
    "matrix_nan": (lambda t, r: _edit(t, lambda d: d["frames"][2]["transform_matrix"][0].__setitem__(0, float("nan"))),
                   "frames[2].transform_matrix", "NaN"),
    "matrix_strings": (lambda t, r: _edit(t, lambda d: d["frames"][0].__setitem__("transform_matrix", "eye")),
                       "frames[0].transform_matrix", "4x4"),
    "bad_focal": (lambda t, r: _edit(t, lambda d: d.__setitem__("fl_x", -3)), "fl_x", "positive"),
    "focal_type": (lambda t, r: _edit(t, lambda d: d.__setitem__("fl_x", "big")), "fl_x", "finite number"),
    "missing_image": (lambda t, r: next(r.rglob("train_0001.png")).unlink(), "frames[1].file_path", "does not exist"),
    "corrupt_image": (lambda t, r: next(r.rglob("train_0000.png")).write_bytes(b"\x89PNG\r\n\x1a\nnot really"),
                      "frames[0].file_path", "cannot decode"),
    "declared_size": (lambda t, r: _edit(t, lambda d: d.__setitem__("w", 99)), "frames[0].file_path", "declares w=99"),
    "outside_path": (lambda t, r: _edit(t, lambda d: _set_file_path(d, 0, "../../etc/passwd")),
                     "frames[0].file_path", "outside the dataset folder"),
    "depth_shape": (lambda t, r: np.save(next(r.rglob("train_0000_depth.npy")), np.zeros((3, 3), np.float32)),
                    "frames[0].depth_file_path", "does not match"),
    "depth_nan": (lambda t, r: np.save(next(r.rglob("train_0000_depth.npy")), np.full((16, 24), np.nan, np.float32)),
                  "frames[0].depth_file_path", "NaN"),
    "depth_pickle": (lambda t, r: next(r.rglob("train_0000_depth.npy")).write_bytes(b"\x80\x04K\x01."),
                     "frames[0].depth_file_path", "cannot read .npy"),
    "bad_aabb": (lambda t, r: _edit(t, lambda d: d.__setitem__("aabb", [[1, 1, 1], [0, 0, 0]])), "aabb", "min < max"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_clear_error(case, written):
    fmt, root, transforms = written
    damage, field, words = CASES[case]
    damage(transforms, root)
    with pytest.raises(DataError) as info:
        load_dataset(root, "train")
    message = str(info.value)
    assert "\n" not in message and words in message
    if field:
        assert field in message
    assert str(root) in message  # names the file


def test_missing_dataset_and_split(tmp_path, splits):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="no transforms"):
        load_dataset(tmp_path)
    save_nerfstudio({"train": splits["train"]}, tmp_path / "ns")
    with pytest.raises(DataError, match="test_filenames"):
        load_dataset(tmp_path / "ns", "test")
    shutil.rmtree(tmp_path / "ns")
