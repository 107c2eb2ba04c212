"""COLMAP models: binary and text encodings of one scene load to identical cameras and points, through
load_dataset; the converter to transforms.json; sparse points initialise Gaussians; bad models are one-line errors."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from scene3d.cameras import look_at
from scene3d.data import colmap
from scene3d.data.colmap import ColmapCamera, ColmapImage, colmap_to_transforms, write_model
from scene3d.data.formats import load_dataset
from scene3d.errors import DataError
from scene3d.rotations import rotmat_to_quat

W, H = 40, 30


def _scene(seed: int = 0):
    """Known poses (10 images on a rising circle), two COLMAP cameras of one lens family, 50 points."""
    eyes = torch.stack([torch.tensor([3 * np.cos(a), 3 * np.sin(a), 1.0 + 0.1 * i])
                        for i, a in enumerate(np.linspace(0, 2 * np.pi, 10, endpoint=False))]).float()
    c2w = look_at(eyes, torch.tensor([0.2, -0.1, 0.3]))
    cameras = [ColmapCamera(1, "OPENCV", W, H, (35.0, 36.0, 20.2, 14.9, -0.1, 0.02, 0.001, -0.002)),
               ColmapCamera(2, "SIMPLE_RADIAL", W, H, (33.0, 19.7, 15.3, 0.05))]
    images = []
    for i in range(10):
        w2c = torch.linalg.inv(c2w[i].double())
        images.append(ColmapImage(i + 1, tuple(rotmat_to_quat(w2c[:3, :3]).tolist()), tuple(w2c[:3, 3].tolist()),
                                  1 + i % 2, f"img_{i:02d}.png"))
    points = np.random.default_rng(seed).normal(size=(50, 3)) * 0.5
    colors = np.random.default_rng(seed + 1).integers(0, 256, size=(50, 3)).astype(np.uint8)
    return c2w, cameras, images, points, colors


def _project(tmp_path, binary: bool, layout: str = "sparse/0"):
    c2w, cameras, images, points, colors = _scene()
    root = tmp_path / ("bin" if binary else "txt")
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for im in images:
        iio.imwrite(root / "images" / im.name, rng.integers(0, 256, size=(H, W, 3)).astype(np.uint8))
    write_model(root / layout, cameras, images, points, colors, binary=binary)
    return root, c2w, points, colors


def test_binary_and_text_models_load_to_identical_cameras(tmp_path):
    root_b, c2w, points, colors = _project(tmp_path, binary=True)
    root_t, *_ = _project(tmp_path, binary=False)
    for split in ("train", "test"):
        b, t = load_dataset(root_b, split, normalize="none"), load_dataset(root_t, split, normalize="none")
        assert b.names == t.names
        assert b.cameras.lens == t.cameras.lens == "OPENCV"
        for name in ("c2w", "K", "distortion"):
            torch.testing.assert_close(getattr(b.cameras, name), getattr(t.cameras, name), atol=0, rtol=0)
        torch.testing.assert_close(b.points, t.points, atol=0, rtol=0)
        torch.testing.assert_close(b.point_colors, t.point_colors, atol=0, rtol=0)
        torch.testing.assert_close(b.images, t.images)
    train = load_dataset(root_b, "train", normalize="none")
    test = load_dataset(root_b, "test", normalize="none")
    assert test.names == ["img_00", "img_08"] and len(train) == 8  # nerfstudio's every-8th split
    # the known cameras and points come back (c2w in OpenCV axes, no flip)
    torch.testing.assert_close(test.cameras.c2w, c2w[[0, 8]], atol=1e-5, rtol=0)
    torch.testing.assert_close(train.points, torch.from_numpy(points).float())
    torch.testing.assert_close(train.point_colors, torch.from_numpy(colors).float() / 255)
    # SIMPLE_RADIAL cameras read as OPENCV with k1 only, f shared
    odd = load_dataset(root_b, "train", normalize="none").subset([0])  # img_01: camera 2
    torch.testing.assert_close(odd.cameras.K[0, :2, :2], torch.diag(torch.tensor([33.0, 33.0])))
    torch.testing.assert_close(odd.cameras.distortion[0], torch.tensor([0.05, 0, 0, 0, 0, 0]))


@pytest.mark.parametrize("layout", ["sparse/0", "sparse", "."])
def test_project_and_model_folders_both_load(tmp_path, layout):
    root, *_ = _project(tmp_path, binary=True, layout=layout)
    model_dir = root / layout
    a = load_dataset(root, "train", normalize="none")
    b = load_dataset(model_dir, "train", normalize="none")
    torch.testing.assert_close(a.cameras.c2w, b.cameras.c2w)


def test_converter_writes_nerfstudio_transforms(tmp_path):
    root, c2w, points, _ = _project(tmp_path, binary=True)
    path = colmap_to_transforms(root)
    doc = json.loads(path.read_text())
    assert doc["applied_transform"] == colmap.APPLIED_TRANSFORM.tolist() and doc["ply_file_path"] == "sparse_pc.ply"
    assert doc["frames"][1]["camera_model"] == "OPENCV" and doc["frames"][1]["k1"] == pytest.approx(0.05)
    ns = load_dataset(path, "train", normalize="none")  # all frames: no split lists
    direct = load_dataset(root / "sparse" / "0", "train", normalize="none")
    applied = torch.cat([colmap.APPLIED_TRANSFORM, torch.tensor([[0.0, 0, 0, 1]])])
    # the file's frame is COLMAP's changed by applied_transform; cameras, lens and points agree
    torch.testing.assert_close(ns.cameras.c2w, applied @ c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(ns.points, direct.points @ applied[:3, :3].T, atol=1e-6, rtol=0)
    train_rows = [1, 2, 3, 4, 5, 6, 7, 9]
    torch.testing.assert_close(ns.cameras.distortion[train_rows], direct.cameras.distortion, atol=1e-7, rtol=0)


def test_sparse_points_initialise_gaussians(tmp_path):
    from scene3d.gaussians.train import FitConfig, initial_scene, load_splits

    root, *_ = _project(tmp_path, binary=True)
    cfg = FitConfig(data=root)
    splits = load_splits(cfg)
    assert splits["train"].cameras.is_pinhole  # undistorted once for the rasteriser
    scene = initial_scene(splits["train"], cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(scene.means, splits["train"].points)


@pytest.mark.parametrize("binary", [True, False])
def test_unsupported_camera_model_names_it(tmp_path, binary):
    c2w, cameras, images, points, colors = _scene()
    cameras = [ColmapCamera(1, "FULL_OPENCV", W, H, tuple(range(1, 13))), cameras[1]]
    write_model(tmp_path / "sparse" / "0", cameras, images, points, colors, binary=binary)
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="camera 1.model: unsupported camera model FULL_OPENCV"):
        load_dataset(tmp_path)


def test_damaged_models_are_one_line_errors(tmp_path):
    root, *_ = _project(tmp_path, binary=True)
    model = root / "sparse" / "0"
    blob = (model / "images.bin").read_bytes()
    for cut, problem in ((100, "num_reg_images: declares 10 entries"), (len(blob) - 5, "file ends early")):
        (model / "images.bin").write_bytes(blob[:cut])
        with pytest.raises(DataError, match=problem) as err:
            load_dataset(root)
        assert "\n" not in str(err.value) and "images.bin" in str(err.value)
    (model / "images.bin").write_bytes(blob)
    (model / "points3D.bin").write_bytes(b"\xff" * 8)
    with pytest.raises(DataError, match="num_points: declares"):
        load_dataset(root)
    root_t, *_ = _project(tmp_path, binary=False)
    cams = root_t / "sparse" / "0" / "cameras.txt"
    cams.write_text(cams.read_text().replace("OPENCV", "OPENCV 12", 1))
    with pytest.raises(DataError, match=r"cameras.txt: line \d+: OPENCV has 8 parameters, got 9"):
        load_dataset(root_t)


def test_script_exit_code_for_unsupported_model(tmp_path):
    import subprocess
    import sys

    c2w, cameras, images, points, colors = _scene()
    write_model(tmp_path / "sparse" / "0", [ColmapCamera(1, "FOV", W, H, (30.0, 30.0, 20.0, 15.0, 0.1)),
                                             cameras[1]], images, points, colors)
    (tmp_path / "images").mkdir()
    run = subprocess.run([sys.executable, "scripts/colmap_to_nerfstudio.py", str(tmp_path)], capture_output=True,
                         text=True)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "unsupported camera model FOV" in run.stderr


@pytest.mark.parametrize("binary", [True, False])
def test_a_fifo_named_like_a_model_file_is_refused_not_read(tmp_path, binary):
    import os

    root, *_ = _project(tmp_path, binary=binary)
    victim = root / "sparse" / "0" / ("points3D.bin" if binary else "points3D.txt")
    victim.unlink()
    os.mkfifo(victim)
    with pytest.raises(DataError, match="is a FIFO, not a regular file"):
        load_dataset(root)
