"""Camera paths: interpolation through the keyframes, nerfstudio's file format both ways, bad files as
one error, and rendering a path to a video whose frames equal the viewer's renders."""

import json
import math
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from scene3d.cameras import Cameras, look_at, orbit_cameras
from scene3d.data.camera_path import CameraPath, Keyframe, interpolate, load_camera_path, save_camera_path
from scene3d.errors import DataError
from scene3d.metrics import psnr
from scene3d.rotations import quat_to_rotmat, rotmat_to_quat, slerp
from viewer.inputs import open_input
from viewer.render_path import export_view, render_cameras

ROOT = Path(__file__).resolve().parents[1]


def _keyframes(n: int = 4) -> list[Keyframe]:
    cams = orbit_cameras(n, 5.0, elevation_deg=25.0, fov_x_deg=50.0, width=64, height=48)
    return [Keyframe(cams.c2w[i], float(cams.fov_y[i]) + 0.1 * i, 64 / 48) for i in range(n)]


def test_rotations_round_trip_and_slerp_halves_the_angle():
    q = torch.nn.functional.normalize(torch.randn(100, 4, generator=torch.Generator().manual_seed(0),
                                                  dtype=torch.float64), dim=-1)
    q = torch.where(q[:, :1] < 0, -q, q)
    torch.testing.assert_close(rotmat_to_quat(quat_to_rotmat(q)), q)
    half = slerp(torch.tensor([1.0, 0, 0, 0], dtype=torch.float64),
                 torch.tensor([math.cos(0.5), 0, 0, math.sin(0.5)], dtype=torch.float64), 0.5)
    torch.testing.assert_close(half, torch.tensor([math.cos(0.25), 0, 0, math.sin(0.25)], dtype=torch.float64))


def test_interpolation_passes_through_every_keyframe_smoothly():
    keys = _keyframes(4)
    frames = interpolate(keys, 3 * 10 + 1)  # keyframe k is frame 10 k
    for k, key in enumerate(keys):
        torch.testing.assert_close(frames[10 * k].c2w, key.c2w, atol=1e-5, rtol=0)
        assert frames[10 * k].fov_y == pytest.approx(key.fov_y)
    positions = torch.stack([f.c2w[:3, 3] for f in frames])
    steps = (positions[1:] - positions[:-1]).norm(dim=-1)
    assert float(steps.max() / steps.min()) < 2.0  # no jumps: evenly spread frames along the orbit
    for f in frames:  # every frame a rotation
        r = f.c2w[:3, :3].double()
        torch.testing.assert_close(r.T @ r, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
    cycle = interpolate(keys, 41, is_cycle=True)
    torch.testing.assert_close(cycle[-1].c2w, keys[0].c2w, atol=1e-5, rtol=0)


def test_saved_path_loads_back_as_the_same_cameras(tmp_path):
    path = CameraPath(_keyframes(3), width=64, height=48, fps=10, seconds=1.2)
    save_camera_path(tmp_path / "p.json", path)
    loaded = load_camera_path(tmp_path / "p.json")
    a, b = path.cameras(), loaded.cameras()
    assert len(a) == len(b) == 12 and (b.width, b.height) == (64, 48)
    torch.testing.assert_close(b.c2w, a.c2w, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.K, a.K, atol=1e-4, rtol=1e-6)
    assert len(loaded.keyframes) == 3 and loaded.fps == 10


def test_reads_nerfstudio_camera_paths_in_opengl_axes(tmp_path):
    """nerfstudio writes row-major OpenGL camera-to-world matrices (camera looks along -z) and vertical
    fov in degrees; a camera at z=5 with the identity rotation looks at the origin, down the z axis."""
    doc = {"camera_type": "perspective", "render_width": 80, "render_height": 60, "fps": 24, "seconds": 1,
           "camera_path": [{"camera_to_world": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 5, 0, 0, 0, 1], "fov": 60,
                            "aspect": 80 / 60}]}
    (tmp_path / "ns.json").write_text(json.dumps(doc))
    cams = load_camera_path(tmp_path / "ns.json").cameras()
    torch.testing.assert_close(cams.centers[0], torch.tensor([0.0, 0.0, 5.0]))
    torch.testing.assert_close(cams.forward[0], torch.tensor([0.0, 0.0, -1.0]))
    assert float(cams.K[0, 1, 1]) == pytest.approx(30 / math.tan(math.radians(30)))
    uv, _ = cams[0].project(torch.tensor([[0.0, 1.0, 0.0]]))  # +y world is up in the picture (smaller v)
    assert float(uv.reshape(-1, 2)[0, 1]) < 30


@pytest.mark.parametrize("change,field", [
    ({"render_width": 0}, "render_width"),
    ({"render_height": 1e9}, "render_height"),
    ({"camera_type": "fisheye"}, "camera_type"),
    ({"camera_path": [{"camera_to_world": [2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 5, 0, 0, 0, 1], "fov": 60}]},
     "camera_path[0].camera_to_world"),
    ({"camera_path": [{"camera_to_world": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 5, 0, 0, 0, 1], "fov": 200}]},
     "camera_path[0].fov"),
    ({"camera_path": [{"camera_to_world": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1e39, 0, 0, 0, 1], "fov": 60}]},
     "camera_path[0].camera_to_world"),
    ({"camera_path": [], "keyframes": []}, "camera_path"),
    ({"camera_path": [], "keyframes": [{"matrix": list(np.eye(4).ravel()), "fov": 50}], "seconds": 1e7},
     "seconds"),
])
def test_bad_camera_path_files_are_one_error_naming_the_field(tmp_path, change, field):
    doc = {"render_width": 80, "render_height": 60, "fps": 24, "seconds": 1,
           "camera_path": [{"camera_to_world": list(np.eye(4).ravel()), "fov": 60, "aspect": 1.3}], **change}
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(DataError) as err:
        load_camera_path(tmp_path / "bad.json")
    assert err.value.field == field and str(tmp_path / "bad.json") in str(err.value)


def test_render_path_script_writes_a_video_whose_frames_are_the_renders(tmp_path):
    cams = orbit_cameras(3, 6.0, elevation_deg=35.0, fov_x_deg=55.0, width=48, height=36, target=(0, 0, 0.2))
    path = CameraPath([Keyframe(cams.c2w[i], float(cams.fov_y[i]), 48 / 36) for i in range(3)], 48, 36, 4, 1.5)
    save_camera_path(tmp_path / "orbit.json", path)
    result = subprocess.run([sys.executable, str(ROOT / "scripts/render_path.py"), "synthetic:0",
                             str(tmp_path / "orbit.json"), "--lossless"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    video = iio.imread(tmp_path / "orbit.mp4")
    expected = render_cameras(open_input("synthetic:0").source, load_camera_path(tmp_path / "orbit.json").cameras(),
                              "rgb", progress=False)
    assert video.shape == (6, 36, 48, 3)
    np.testing.assert_array_equal(video, (expected * 255).round().byte().numpy())  # lossless: exactly the renders
    # the default (players' H.264, 4:2:0 chroma) is lossy: close to the renders, not equal
    result = subprocess.run([sys.executable, str(ROOT / "scripts/render_path.py"), "synthetic:0",
                             str(tmp_path / "orbit.json"), "--buffer", "depth", "--out", str(tmp_path / "d.mp4")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and iio.imread(tmp_path / "d.mp4").shape == (6, 36, 48, 3)
    depth = render_cameras(open_input("synthetic:0").source, path.cameras(), "depth", progress=False)
    # (at 48x36 the halved chroma resolution of saturated false colours costs most of the error)
    assert float(psnr(torch.from_numpy(iio.imread(tmp_path / "d.mp4")).float() / 255, depth)) > 24


def test_render_path_script_bad_inputs_are_one_line(tmp_path):
    (tmp_path / "p.json").write_text("{not json")
    result = subprocess.run([sys.executable, str(ROOT / "scripts/render_path.py"), "synthetic:0",
                             str(tmp_path / "p.json")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "malformed JSON" in result.stderr and len(result.stderr.splitlines()) == 1


def test_export_view_writes_pictures_raw_buffers_and_the_camera(tmp_path):
    source = open_input("synthetic:0").source
    cams = Cameras.from_fov(look_at(torch.tensor([[4.0, -4.0, 3.0]]), torch.zeros(3)), 0.9, 40, 30)
    written = export_view(source, cams, tmp_path, "view")
    names = {p.name for p in written}
    assert {"view_rgb.png", "view_depth.npy", "view_normals.npy", "view_labels.npy", "view_camera.json"} <= names
    depth = np.load(tmp_path / "view_depth.npy")
    torch.testing.assert_close(torch.from_numpy(depth), source.render(cams, "depth").depth)
    assert np.load(tmp_path / "view_labels.npy").dtype.kind == "i"
    again = load_camera_path(tmp_path / "view_camera.json").cameras()
    torch.testing.assert_close(again.c2w, cams.c2w, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.K, cams.K, atol=1e-4, rtol=1e-6)


# the viewer's Camera path panel -------------------------------------------------------------------------
def test_viewer_panel_builds_saves_loads_renders_and_exports_a_path(tmp_path):
    from viewer.camera import cameras_to_view
    from viewer.panels.paths import keyframe_from_view
    from viewer.server import ViewerConfig, ViewerServer

    content = open_input("synthetic:0")
    with ViewerServer(content, ViewerConfig(port=0, export_dir=tmp_path)) as viewer:
        panel = viewer.paths
        panel.add(keyframe_from_view(cameras_to_view(content.home)))
        panel.add_dataset_camera(3)
        panel.add_dataset_camera(99)  # no such camera: said, nothing added
        assert len(panel.keyframes) == 2 and "no dataset camera" in panel.status.content
        torch.testing.assert_close(panel.keyframes[1].c2w, content.dataset.cameras.c2w[3])
        torch.testing.assert_close(panel.show_preview(1.0).c2w, panel.keyframes[1].c2w, atol=1e-5, rtol=0)
        torch.testing.assert_close(panel.show_preview(0.0).c2w, panel.keyframes[0].c2w, atol=1e-5, rtol=0)
        panel.seconds.value, panel.fps.value, panel.width.value, panel.height.value = 1.0, 4, 32, 24
        panel.name.value = "tour"
        panel._report(panel.save_path)
        assert (tmp_path / "tour.json").is_file() and "saved" in panel.status.content
        panel._report(panel.render_video)
        video = iio.imread(tmp_path / "tour.mp4")
        assert video.shape == (4, 24, 32, 3) and "4 frames" in panel.status.content
        panel._set([])
        panel._report(panel.load_path)
        assert len(panel.keyframes) == 2 and "loaded 2 keyframes" in panel.status.content
        panel._report(lambda: panel.export_view(cameras_to_view(content.home)))
        assert (tmp_path / "tour_depth.npy").is_file() and (tmp_path / "tour_camera.json").is_file()
        for hostile in ("../escape", "/etc/passwd", "a/b", ".hidden", ""):
            panel.name.value = hostile
            panel._report(panel.save_path)
            assert "**error**" in panel.status.content, hostile
        assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".json") == ["tour.json", "tour_camera.json"]
