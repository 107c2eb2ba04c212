"""What the viewer opens and where it listens: PLY files of every kind (the shared `scene3d.plyfile`
reader), runs that end in a mesh or splats, the world's up axis, legends, and command lines that
must fail in one line instead of hanging."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scene3d.cameras import Cameras, look_at, orbit_cameras
from scene3d.data.dataset import MultiViewDataset
from scene3d.data.points_ply import read_points_ply, write_points_ply
from scene3d.data.synthetic import CLASS_NAMES, make_world
from scene3d.errors import ConfigError, DataError
from scene3d.gaussians import GaussianScene
from scene3d.gaussians.ply import read_ply, write_ply
from scene3d.plyfile import read_ply_elements, read_ply_kind
from scene3d.runs import RunDir
from viewer.adapters.gaussians import GaussianSource
from viewer.adapters.geometry import MeshPanel, PointsPanel
from viewer.camera import cameras_to_view
from viewer.content import ViewerContent
from viewer.inputs import open_input
from viewer.listen import choose_port
from viewer.panels.world import FROM_CAMERAS, resolve_up
from viewer.server import ViewerConfig, ViewerServer
from viewer.sources import SyntheticSource, depth_range, render_view

ROOT = Path(__file__).resolve().parents[1]


def _mesh_ply(path: Path, fmt: str = "binary", quads: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A unit square (two triangles or one quad) with vertex colours, as Open3D and most tools write it."""
    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    faces = np.array([[0, 1, 2, 3]]) if quads else np.array([[0, 1, 2], [0, 2, 3]])
    header = (f"ply\nformat {'ascii' if fmt == 'ascii' else 'binary_little_endian'} 1.0\ncomment test\n"
              "element vertex 4\nproperty double x\nproperty double y\nproperty double z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              f"element face {len(faces)}\nproperty list uchar uint vertex_indices\nend_header\n")
    if fmt == "ascii":
        body = "".join(f"{x} {y} {z} 200 100 50\n" for x, y, z in vertices)
        body += "".join(f"{len(f)} {' '.join(map(str, f))}\n" for f in faces)
        path.write_bytes(header.encode() + body.encode())
    else:
        rows = np.zeros(4, [("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
        for i, c in enumerate("xyz"):
            rows[c] = vertices[:, i]
        rows["r"], rows["g"], rows["b"] = 200, 100, 50
        face_rows = np.zeros(len(faces), [("n", "u1"), ("i", "<u4", (faces.shape[1],))])
        face_rows["n"], face_rows["i"] = faces.shape[1], faces
        path.write_bytes(header.encode() + rows.tobytes() + face_rows.tobytes())
    return vertices, faces


# the shared PLY reader -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["binary", "ascii"])
def test_one_reader_reads_meshes_point_clouds_and_gaussians(tmp_path, fmt):
    vertices, faces = _mesh_ply(tmp_path / "mesh.ply", fmt)
    elements = read_ply_elements(tmp_path / "mesh.ply")
    np.testing.assert_array_equal(np.stack([elements["vertex"][c] for c in "xyz"], -1), vertices)
    np.testing.assert_array_equal(elements["face"]["vertex_indices"], faces)
    assert read_ply_kind(tmp_path / "mesh.ply") == "mesh"
    write_points_ply(tmp_path / "pc.ply", vertices, np.full((4, 3), 7, np.uint8))
    points, colors = read_points_ply(tmp_path / "pc.ply")
    assert read_ply_kind(tmp_path / "pc.ply") == "points" and np.array_equal(points, vertices) and colors.max() == 7
    write_ply(tmp_path / "g.ply", GaussianScene.random(5, torch.tensor([[0.0, 0, 0], [1, 1, 1]])))
    assert read_ply_kind(tmp_path / "g.ply") == "gaussians"
    # a mesh given where Gaussians are expected says what it is
    with pytest.raises(DataError, match="this PLY is a triangle mesh, not 3D Gaussians"):
        read_ply(tmp_path / "mesh.ply")
    with pytest.raises(DataError, match="this PLY is a point cloud, not 3D Gaussians"):
        read_ply(tmp_path / "pc.ply")


def test_faces_of_mixed_lengths_and_truncated_lists_are_one_clear_error(tmp_path):
    _mesh_ply(tmp_path / "m.ply", "ascii")
    text = (tmp_path / "m.ply").read_text().replace("3 0 2 3\n", "4 0 2 3 1\n")
    (tmp_path / "bad.ply").write_text(text)
    with pytest.raises(DataError, match="differ in length") as err:
        read_ply_elements(tmp_path / "bad.ply")
    assert err.value.field == "face" and str(tmp_path / "bad.ply") in str(err.value)
    _mesh_ply(tmp_path / "b.ply")
    (tmp_path / "short.ply").write_bytes((tmp_path / "b.ply").read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated") as err:
        read_ply_elements(tmp_path / "short.ply")
    assert err.value.field == "face"


# PLY files and runs in the viewer ---------------------------------------------------------------------
@pytest.mark.parametrize("quads", [False, True])
def test_a_mesh_ply_is_drawn_as_a_mesh(tmp_path, quads):
    _mesh_ply(tmp_path / "mesh.ply", quads=quads)
    content = open_input(tmp_path / "mesh.ply")
    assert content.source is None and content.title == "mesh mesh.ply" and content.viewable
    with ViewerServer(content, ViewerConfig(port=0)) as viewer:
        panel = next(p for p in viewer.panels if isinstance(p, MeshPanel))
        assert panel.handle.faces.shape == (2, 3) and panel.handle.color == (200, 100, 50)
        assert panel.handle.name.startswith("/scene0/")  # hidden with its scene
        panel.wireframe.value = True
        assert panel.handle.wireframe


def test_a_point_cloud_ply_is_drawn_as_points(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(500, 3)).astype(np.float32)
    write_points_ply(tmp_path / "sparse_pc.ply", points, rng.integers(0, 255, (500, 3), dtype=np.uint8))
    content = open_input(tmp_path / "sparse_pc.ply")
    with ViewerServer(content, ViewerConfig(port=0)) as viewer:
        panel = next(p for p in viewer.panels if isinstance(p, PointsPanel))
        np.testing.assert_allclose(panel.handle.points, points, atol=2e-3)  # viser sends float16
        panel.size.value = panel.size.value * 2
        assert panel.handle.point_size == pytest.approx(panel.size.value)


def test_score_distillation_runs_show_their_splats_or_mesh(tmp_path):
    splats = RunDir(tmp_path / "splat_run")
    splats.log_scalars(0, {"loss": 1.0})
    write_ply(splats.path / "splats.ply", GaussianScene.random(20, torch.tensor([[0.0, 0, 0], [1, 1, 1]])))
    splats.close()
    assert isinstance(open_input(splats.path).source, GaussianSource)
    field = RunDir(tmp_path / "field_run")
    field.log_scalars(0, {"loss": 1.0})
    field.close()
    _mesh_ply(field.path / "mesh.ply")
    content = open_input(field.path)
    assert content.source is None and content.note is None and len(content.extra_panels) == 1
    with ViewerServer(content, ViewerConfig(port=0)) as viewer:
        assert any(isinstance(p, MeshPanel) for p in viewer.panels)
    (field.path / "mesh.ply").unlink()
    assert "holds no checkpoint" in open_input(field.path).note


# the world's up axis -------------------------------------------------------------------------------
def _colmap_like(n: int = 8) -> Cameras:
    """Cameras around a capture whose up is -y (COLMAP's frame): our orbit turned by +90 degrees about x."""
    cams = orbit_cameras(n, 4.0, elevation_deg=20.0, width=32, height=24)
    turn = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])  # z -> -y
    return Cameras(turn @ cams.c2w, cams.K, cams.width, cams.height)


def test_up_axis_is_detected_from_the_cameras_or_chosen():
    label, up = resolve_up("auto", _colmap_like())
    assert label == FROM_CAMERAS and np.allclose(up, [0, -1, 0], atol=1e-6)
    assert resolve_up("auto", None)[0] == "+z" and np.allclose(resolve_up("-y", None)[1], [0, -1, 0])
    # cameras looking every way (up vectors cancel): +z
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, :3, :3] = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    assert resolve_up("auto", Cameras(c2w, torch.eye(3).repeat(2, 1, 1), 8, 8))[0] == "+z"


def test_viewer_sets_the_detected_up_and_the_gui_changes_it(tmp_path):
    cams = _colmap_like(4)
    dataset = MultiViewDataset(cameras=cams, images=torch.rand(4, 24, 32, 3),
                               aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), background=torch.ones(3),
                               names=[f"v{i}" for i in range(4)])
    with ViewerServer(ViewerContent("capture", dataset=dataset), ViewerConfig(port=0)) as viewer:
        assert viewer.world.dropdown.value == FROM_CAMERAS and np.allclose(viewer.world.up, [0, -1, 0], atol=1e-6)
        target = viewer.frustums.select(1)
        assert np.allclose(target["up"], [0, -1, 0], atol=1e-6)  # a jump keeps orbiting about the world's up
        viewer.world.dropdown.value = "+z"
        assert np.allclose(viewer.world.up, [0, 0, 1])
    with ViewerServer(ViewerContent("capture", dataset=dataset), ViewerConfig(port=0, up="+x")) as viewer:
        assert viewer.world.dropdown.value == "+x"


# legends -----------------------------------------------------------------------------------------
def test_false_colour_buffers_carry_their_legend():
    source = SyntheticSource(make_world(0))
    view = cameras_to_view(Cameras.from_fov(look_at(torch.tensor([[4.0, -4.0, 3.0]]), torch.zeros(3)), 0.9, 32, 24))
    assert render_view(source, view, "rgb", 32).legend is None
    depth = render_view(source, view, "depth", 32)
    near, far = depth_range(Cameras.from_fov(look_at(torch.tensor([[4.0, -4.0, 3.0]]), torch.zeros(3)), 0.9, 32, 24),
                            source.world.aabb)
    assert f"{near:.3g}" in depth.legend.caption and f"{far:.3g}" in depth.legend.caption
    assert "scene units" in depth.legend.caption and depth.legend.image.shape[2] == 3
    # the depth strip runs warm (near) to cool (far), as the picture is coloured
    strip = depth.legend.image.astype(float)
    assert strip[0, 0, 0] > strip[0, 0, 2] and strip[0, -1, 2] > strip[0, -1, 0]
    labels = render_view(source, view, "labels", 32).legend
    assert all(name in labels.caption for name in CLASS_NAMES) and labels.image.shape[1] >= len(CLASS_NAMES) * 24
    assert "world frame" in render_view(source, view, "normals", 32).legend.caption


def test_scene_panel_shows_the_legend_of_the_buffer_rendered():
    with ViewerServer(open_input("synthetic:0"), ViewerConfig(port=0)) as viewer:
        panel = viewer.scene
        panel.buffer.value = "depth"
        panel.render(cameras_to_view(viewer.content.home), True)
        assert panel.legend.visible and "depth" in panel.legend.content and panel.legend_image.visible
        panel.buffer.value = "rgb"
        panel.render(cameras_to_view(viewer.content.home), True)
        assert not panel.legend.visible and not panel.legend_image.visible


# where the viewer listens ---------------------------------------------------------------------------
def test_taken_port_moves_on_or_fails_with_strict_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        chosen, note = choose_port("127.0.0.1", port)
        assert chosen > port and f"port {port} is taken" in note
        with pytest.raises(ConfigError, match="taken by another program") as err:
            choose_port("127.0.0.1", port, strict=True)
        assert err.value.field == "--port"
    assert choose_port("127.0.0.1", 0) == (0, None)


@pytest.mark.parametrize("host,port,field", [("127.0.0.1", 70000, "--port"), ("203.0.113.7", 8080, "--host"),
                                             ("no-such-host.invalid", 8080, "--host")])
def test_impossible_addresses_are_one_config_error(host, port, field):
    with pytest.raises(ConfigError) as err:
        choose_port(host, port)
    assert err.value.field == field


@pytest.mark.parametrize("args,message", [
    (["--port", "70000"], "--port"),
    (["--host", "203.0.113.7"], "cannot listen on 203.0.113.7"),
])
def test_view_script_bad_address_is_one_line_exit_2_never_a_hang(args, message):
    result = subprocess.run([sys.executable, str(ROOT / "scripts/view.py"), "synthetic:0", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_gaussian_scenes_open_on_browser_splats_unless_told_otherwise(tmp_path):
    write_ply(tmp_path / "g.ply", GaussianScene.random(50, torch.tensor([[0.0, 0, 0], [1, 1, 1]]), sh_degree=0))
    content = open_input(tmp_path / "g.ply")
    with ViewerServer(content, ViewerConfig(port=0)) as viewer:
        assert viewer.scene.buffer.value == "splats"
    config = ViewerConfig(port=0)
    config.render.browser_splats = False  # a browser without a GPU: the server's rasterizer is faster
    with ViewerServer(content, config) as viewer:
        assert viewer.scene.buffer.value == "rgb"
