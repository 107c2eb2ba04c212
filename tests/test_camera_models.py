"""Lens models: Newton undistortion against the forward model, rays of distorted datasets against
independently computed 3D points, the transforms.json lens fields, and the pinhole copy for Gaussians."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from scene3d.camera_models import MODELS, distort, distortion_vector, undistort
from scene3d.cameras import Cameras, look_at
from scene3d.data.dataset import MultiViewDataset
from scene3d.data.formats import load_dataset, save_nerfstudio
from scene3d.data.undistort import source_pixels, undistort_dataset
from scene3d.errors import DataError

LENSES = {  # lens, distortion [k1, k2, k3, k4, p1, p2]: strong enough to move edge pixels by several pixels
    "OPENCV": ("OPENCV", {"k1": -0.18, "k2": 0.05, "k3": -0.01, "p1": 0.004, "p2": -0.003}),
    "OPENCV_FISHEYE": ("OPENCV_FISHEYE", {"k1": 0.2, "k2": -0.05, "k3": 0.01, "k4": -0.002}),
    "SIMPLE_RADIAL": ("OPENCV", {"k1": 0.12}),
    "RADIAL": ("OPENCV", {"k1": -0.1, "k2": 0.03}),
}
W, H = 48, 36
K = torch.tensor([[40.0, 0.0, 24.3], [0.0, 42.0, 17.8], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _forward_np(xy: np.ndarray, lens: str, d: dict) -> np.ndarray:
    """The lens model written independently (numpy, from OpenCV's documented formulas)."""
    x, y = xy[..., 0], xy[..., 1]
    k1, k2, k3, k4, p1, p2 = (d.get(k, 0.0) for k in ("k1", "k2", "k3", "k4", "p1", "p2"))
    r2 = x**2 + y**2
    if lens == "OPENCV":
        radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3 + k4 * r2**4
        return np.stack([x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x**2),
                         y * radial + p1 * (r2 + 2 * y**2) + 2 * p2 * x * y], -1)
    r = np.sqrt(r2)
    th = np.arctan(r)
    th_d = th * (1 + k1 * th**2 + k2 * th**4 + k3 * th**6 + k4 * th**8)
    return xy * (th_d / r)[..., None]


@pytest.mark.parametrize("model", list(LENSES))
def test_undistort_inverts_forward_model_to_1e5_px(model):
    lens, values = LENSES[model]
    params = distortion_vector(values).double()
    cams = Cameras(torch.eye(4, dtype=torch.float64), K, W, H)
    uv = cams.pixel_centers().reshape(-1, 2)  # every pixel centre, corners included
    xy_d = (uv - K[:2, 2]) / K[[0, 1], [0, 1]]
    xy = undistort(xy_d, params, lens)
    back = distort(xy, params, lens) * K[[0, 1], [0, 1]] + K[:2, 2]
    assert (back - uv).abs().max() < 1e-5
    # and the forward model is the independent one
    np.testing.assert_allclose(distort(xy, params, lens).numpy(), _forward_np(xy.numpy(), lens, values), atol=1e-12)
    # distortion is not negligible here: the pinhole reading is pixels off
    assert ((xy - xy_d) * K[[0, 1], [0, 1]]).abs().max() > 0.5


def _capture(model: str, tmp_path) -> tuple[MultiViewDataset, dict]:
    """A nerfstudio dataset with `model`'s lens written to disk, read back with load_dataset."""
    lens, values = LENSES[model]
    eyes = torch.tensor([[3.0, 0.5, 1.0], [-2.0, 2.5, 1.5]])
    c2w = look_at(eyes, torch.tensor([0.1, 0.2, 0.3]))
    cams = Cameras(c2w, K.float(), W, H, lens, distortion_vector(values))
    ds = MultiViewDataset(cameras=cams, images=torch.rand(2, H, W, 3), aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
    save_nerfstudio({"train": ds}, tmp_path)
    doc = json.loads((tmp_path / "transforms.json").read_text())
    doc["camera_model"] = model
    for key in ("k1", "k2", "k3", "k4", "p1", "p2"):
        doc.pop(key, None)
    doc.update(values)
    (tmp_path / "transforms.json").write_text(json.dumps(doc))
    return load_dataset(tmp_path, "train"), values


@pytest.mark.parametrize("model", list(LENSES))
def test_rays_of_a_distorted_dataset_hit_known_points(model, tmp_path):
    ds, values = _capture(model, tmp_path)
    lens = LENSES[model][0]
    assert ds.cameras.lens == lens
    rays = ds.cameras.rays()
    uv = ds.cameras.pixel_centers().reshape(-1, 2).double().numpy()[::7]
    fx, fy, cx, cy = 40.0, 42.0, 24.3, 17.8
    worst, pinhole_miss = 0.0, 0.0
    for cam in range(len(ds)):
        c2w = ds.cameras.c2w[cam].double().numpy()
        for p, (u, v) in enumerate(uv):
            # the camera-space point at depth z whose projection is this pixel centre: solved by least squares
            target = np.array([(u - cx) / fx, (v - cy) / fy])
            sol = least_squares(lambda q, t=target: _forward_np(q[None], lens, values)[0] - t, target, xtol=1e-15,
                                ftol=1e-15, gtol=1e-15)
            z = 1.5 + 0.1 * (p % 2)
            point = c2w[:3, :3] @ np.array([sol.x[0] * z, sol.x[1] * z, z]) + c2w[:3, 3]
            index = np.unravel_index(p * 7, (H, W))
            o = rays.origins[cam][index].double().numpy()
            d = rays.dirs[cam][index].double().numpy()
            worst = max(worst, np.linalg.norm(np.cross(point - o, d)))  # distance of the point from the ray
            pin = c2w[:3, :3] @ np.array([*target, 1.0])
            pinhole_miss = max(pinhole_miss, np.linalg.norm(np.cross(point - o, pin / np.linalg.norm(pin))))
    assert worst < 1e-4
    assert pinhole_miss > 1e-2  # a pinhole reading misses them


def test_projection_is_the_inverse_of_rays(tmp_path):
    ds, _ = _capture("OPENCV_FISHEYE", tmp_path)
    uv = ds.cameras.pixel_centers().reshape(1, -1, 2).expand(2, -1, -1)
    depth = torch.full(uv.shape[:2], 2.0)
    points = ds.cameras.unproject(uv, depth)
    back, z = ds.cameras.project(points)
    torch.testing.assert_close(back, uv, atol=2e-3, rtol=0)  # float32 through a 4x4 pose
    torch.testing.assert_close(z, depth, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("edit", "field"), [
    ({"camera_model": "FOV"}, "camera_model"),
    ({"camera_model": "EQUIRECTANGULAR"}, "camera_model"),
    ({"camera_model": "OPENCV", "k4": 0.1}, "k4"),
    ({"camera_model": "OPENCV_FISHEYE", "p1": 0.01}, "p1"),
    ({"camera_model": "PINHOLE", "k1": 0.2}, "k1"),
    ({"k5": 0.3}, "k5"),
    ({"camera_model": "OPENCV", "k1": "big"}, "k1"),
])
def test_unsupported_lens_fields_are_one_line_errors(edit, field, tmp_path):
    _capture("OPENCV", tmp_path)
    doc = json.loads((tmp_path / "transforms.json").read_text())
    for key in ("k1", "k2", "k3", "p1", "p2"):
        doc.pop(key)
    doc.update(edit)
    (tmp_path / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path, "train")
    assert f": {field}: " in str(err.value) and "\n" not in str(err.value)


def test_model_less_file_reads_distortion_like_nerfstudio(tmp_path):
    _capture("OPENCV", tmp_path)
    doc = json.loads((tmp_path / "transforms.json").read_text())
    del doc["camera_model"]
    doc["k4"] = 0.001
    (tmp_path / "transforms.json").write_text(json.dumps(doc))
    ds = load_dataset(tmp_path, "train")
    assert ds.cameras.lens == "OPENCV"
    assert ds.cameras.distortion[0, 3].item() == pytest.approx(0.001)
    # and our writer keeps the r^8 term readable
    save_nerfstudio({"train": ds}, tmp_path / "again")
    torch.testing.assert_close(load_dataset(tmp_path / "again", "train").cameras.distortion,
                               ds.cameras.distortion)


def test_every_model_round_trips_through_save_nerfstudio(tmp_path):
    for model in MODELS:
        lens = MODELS[model][0]
        values = {k: 0.01 * (i + 1) for i, k in enumerate(MODELS[model][1])}
        dist = None if lens == "PINHOLE" else distortion_vector(values)
        cams = Cameras(look_at(torch.tensor([[2.0, 0.0, 0.0]]), torch.zeros(3)), K.float(), W, H, lens, dist)
        ds = MultiViewDataset(cameras=cams, images=torch.rand(1, H, W, 3), aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
        save_nerfstudio({"train": ds}, tmp_path / model)
        back = load_dataset(tmp_path / model, "train").cameras
        assert back.lens == lens
        if dist is not None:
            torch.testing.assert_close(back.distortion, cams.distortion)


def test_undistorted_copy_matches_a_pinhole_rendering():
    """A smooth image rendered through the lens, undistorted, equals the same image rendered pinhole."""
    def pattern(xy):  # a smooth function of the undistorted normalised coordinates
        return torch.stack([0.5 + 0.4 * torch.sin(3 * xy[..., 0]), 0.5 + 0.4 * torch.cos(4 * xy[..., 1]),
                            0.5 + 0.3 * torch.sin(2 * xy[..., 0] + 2 * xy[..., 1])], -1)

    lens, values = LENSES["OPENCV_FISHEYE"]
    cams = Cameras(torch.eye(4), K.float(), W, H, lens, distortion_vector(values))
    uv = cams.pixel_centers()[None].reshape(1, -1, 2)
    distorted = pattern(cams.pixel_dirs_camera(uv)[..., :2]).reshape(1, H, W, 3)
    ds = MultiViewDataset(cameras=cams, images=distorted, aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
    pin = undistort_dataset(ds)
    assert pin.cameras.is_pinhole
    expected = pattern(pin.cameras.pixel_dirs_camera(uv)[..., :2]).reshape(1, H, W, 3)
    inside = pin.masks
    assert inside.float().mean() > 0.9
    err = (pin.images - expected).abs()[inside]
    assert err.max() < 0.02
    # the source positions are the forward model of the pinhole pixels
    src = source_pixels(cams, pin.cameras)
    back = cams.pixel_dirs_camera(src.reshape(1, -1, 2))[..., :2]
    torch.testing.assert_close(back, pin.cameras.pixel_dirs_camera(uv)[..., :2], atol=1e-5, rtol=0)


def test_rasterize_refuses_distorted_cameras():
    from scene3d.gaussians.rasterize import rasterize
    from scene3d.gaussians.scene import GaussianScene

    cams = Cameras(torch.eye(4), K.float(), W, H, "OPENCV", distortion_vector({"k1": 0.1}))
    scene = GaussianScene.random(10, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    with pytest.raises(ValueError, match="undistort"):
        rasterize(scene, cams)


def test_pinhole_rays_unchanged():
    """The pinhole path is the plain one: directions from K alone."""
    cams = Cameras(look_at(torch.tensor([[2.0, 1.0, 0.5]]), torch.zeros(3)), K.float(), W, H)
    d = cams.pixel_dirs_camera(cams.pixel_centers().reshape(1, -1, 2))
    uv = cams.pixel_centers().reshape(-1, 2)
    torch.testing.assert_close(d[0, :, 0], (uv[:, 0] - K[0, 2].float()) / K[0, 0].float())
    assert math.isclose(float(d[0, :, 2].min()), 1.0)
