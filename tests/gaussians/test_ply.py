import struct

import numpy as np
import pytest
import torch

from scene3d.errors import DataError
from scene3d.gaussians.ply import read_ply, write_ply
from tests.gaussians.helpers import random_scene


@pytest.mark.parametrize("kind", ["sh0", "sh3", "features"])
def test_round_trip_is_exact(tmp_path, kind):
    scene = {"sh0": random_scene(50, sh_degree=0), "sh3": random_scene(50, sh_degree=3),
             "features": random_scene(50, feature_dim=7)}[kind]
    path = write_ply(tmp_path / "s.ply", scene)
    back = read_ply(path)
    assert set(back.params.keys()) == set(scene.params.keys())
    for k, v in scene.params.items():
        assert torch.equal(back.params[k], v), k


def test_hand_written_standard_ply_loads(tmp_path):
    """A degree-1 file written byte by byte in the layout of the original 3DGS code."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *[f"f_rest_{i}" for i in range(9)],
             "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    rows = []
    for i in range(2):
        # f_rest is channel-major: R coefficients 1..3, then G, then B
        rest = [100 * c + 10 * i + k for c in range(3) for k in range(3)]
        rows.append([1.0 + i, 2.0, 3.0, 0, 0, 0, 0.1, 0.2, 0.3, *rest, -0.5 + i, -2.0, -3.0, -4.0, 1.0, 0.0, 0.0, 0.5])
    header = "ply\nformat binary_little_endian 1.0\ncomment by hand\nelement vertex 2\n"
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    body = b"".join(struct.pack("<" + "f" * len(names), *r) for r in rows)
    (tmp_path / "hand.ply").write_bytes(header.encode() + body)
    scene = read_ply(tmp_path / "hand.ply")
    assert len(scene) == 2 and scene.sh_degree == 1
    torch.testing.assert_close(scene.means[1], torch.tensor([2.0, 2.0, 3.0]))
    torch.testing.assert_close(scene.params["sh0"][0, 0], torch.tensor([0.1, 0.2, 0.3]))
    # shN[i, k, c] = f_rest[c * 3 + k]
    torch.testing.assert_close(scene.params["shN"][1, 2], torch.tensor([12.0, 112.0, 212.0]))
    torch.testing.assert_close(scene.params["opacity_logits"], torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(scene.params["log_scales"][0], torch.tensor([-2.0, -3.0, -4.0]))
    torch.testing.assert_close(scene.quats[0], torch.tensor([1.0, 0.0, 0.0, 0.5]) / np.sqrt(1.25))


def test_ascii_ply_loads(tmp_path):
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    text = "ply\nformat ascii 1.0\nelement vertex 1\n" + "".join(f"property float {n}\n" for n in names)
    text += "end_header\n1 2 3 0.5 0.5 0.5 0 -1 -1 -1 1 0 0 0\n"
    (tmp_path / "a.ply").write_text(text)
    scene = read_ply(tmp_path / "a.ply")
    assert scene.sh_degree == 0 and torch.equal(scene.means, torch.tensor([[1.0, 2.0, 3.0]]))


@pytest.mark.parametrize("content,field", [
    (b"hello", "header"),
    (b"ply\nformat binary_big_endian 1.0\nelement vertex 1\nproperty float x\nend_header\n", "format"),
    (b"ply\nformat binary_little_endian 1.0\nproperty float x\nend_header\n", "element vertex"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty quaternion x\nend_header\n", "property"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex x\nend_header\n", "element"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 5\nproperty float x\nend_header\n\x00\x00", "vertex"),
])
def test_malformed_files_raise_data_error(tmp_path, content, field):
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_ply(path)
    assert err.value.field == field and str(path) in str(err.value)


def test_missing_rotation_is_reported(tmp_path):
    text = "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\n"
    text += "property float opacity\nend_header\n0 0 0 0\n"
    (tmp_path / "r.ply").write_text(text)
    with pytest.raises(DataError, match="rot_"):
        read_ply(tmp_path / "r.ply")
