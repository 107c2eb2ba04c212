"""Property-based fuzzing of every reader (hypothesis).

Each entry of `READERS` builds a valid input once (`FuzzReader.seed(folder)`), then hypothesis
damages a copy of it per case (malformed and truncated JSON, missing / extra / wrongly typed
fields, NaN and inf, wrong shapes and dtypes, truncated and corrupt binaries, wrong PLY headers,
huge declared sizes, paths that do not exist or point outside the dataset folder, values that
overflow or vanish in float32, camera poses that are not rigid, multi-frame images, special files
(FIFOs, /dev/zero, folders) named like data, and resumes of a run folder with another run's
configuration, damaged loop state or NaN weights) and calls the reader. `check_case` accepts a
case when it loads, or raises a `Scene3DError` whose one-line message names the file and the field;
anything else (another exception, a hang past `timeout_s`, more than `max_rss_growth_mb` of new peak
memory) is a failure.

    failures, cases = fuzz_reader("ply", n_examples=200)      # [] when every case passed
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import tempfile
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scene3d.errors import Scene3DError

# values ---------------------------------------------------------------------------------------
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                     st.sampled_from([float("nan"), float("inf"), -float("inf"), 0, -1, 1e308, 10**400]),
                     st.text(max_size=20))
JSON_VALUES = st.recursive(_SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=5),
                                                             st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                           max_leaves=20)
BAD_PATHS = st.one_of(st.sampled_from(["../outside.png", "../../etc/passwd", "/etc/passwd", "a/../../b.png",
                                       "missing.png", "", ".", "train", "x\x00y.png", "a" * 5000, "~/x.png",
                                       "./train/../../outside.png", "train/r_0_depth.npy"]), st.text(max_size=30))


class Timeout(Exception):
    """A case ran past its time limit (a hang)."""


@dataclass
class Outcome:
    ok: bool
    kind: str  # "loaded", "error" (a well-formed project error) or what went wrong
    message: str


def check_case(load: Callable[[], Any], timeout_s: float = 20.0, max_rss_growth_mb: float = 512.0) -> Outcome:
    """Run one reader call; classify its result (see the module docstring)."""

    def alarm(*_):
        raise Timeout(f"no result after {timeout_s} s")

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        load()
        outcome = Outcome(True, "loaded", "")
    except Scene3DError as err:
        msg = str(err)
        if "\n" in msg or not getattr(err, "path", None) or not getattr(err, "field", None):
            outcome = Outcome(False, "malformed error", f"{type(err).__name__}: {msg!r}")
        else:
            outcome = Outcome(True, "error", msg)
    except Timeout as err:
        outcome = Outcome(False, "hang", str(err))
    except Exception as err:  # noqa: BLE001 - this is what the fuzzer looks for
        frame = traceback.extract_tb(err.__traceback__)[-1]
        where = f" at {Path(frame.filename).name}:{frame.lineno}"
        outcome = Outcome(False, type(err).__name__, f"{type(err).__name__}: {str(err)[:300]}{where}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    if outcome.ok and growth > max_rss_growth_mb:
        return Outcome(False, "memory", f"peak memory grew by {growth:.0f} MB")
    return outcome


# binary damage ----------------------------------------------------------------------------------
@st.composite
def damaged_bytes(draw, raw: bytes) -> bytes:
    """Truncation, flipped / inserted / deleted bytes, random bytes, or an empty file."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "random", "empty", "append"]))
    n = len(raw)
    if kind == "truncate":
        return raw[: draw(st.integers(0, max(n - 1, 0)))]
    if kind == "flip":
        out = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            if out:
                out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    if kind == "insert":
        at = draw(st.integers(0, n))
        return raw[:at] + draw(st.binary(min_size=1, max_size=64)) + raw[at:]
    if kind == "delete":
        at = draw(st.integers(0, max(n - 1, 0)))
        return raw[:at] + raw[at + draw(st.integers(1, 64)):]
    if kind == "append":
        return raw + draw(st.binary(min_size=1, max_size=256))
    if kind == "random":
        return draw(st.binary(max_size=512))
    return b""


def png_with_size(raw: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR declares another size (CRC fixed, so decoders trust the header)."""
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        return raw
    data = struct.pack(">II", width, height) + raw[24:29]
    return raw[:16] + data + struct.pack(">I", zlib.crc32(raw[12:16] + data) & 0xFFFFFFFF) + raw[33:]


# readers ----------------------------------------------------------------------------------------
@dataclass
class FuzzReader:
    """`seed(folder)` writes valid inputs into `folder` once; `case(draw, folder)` damages a copy
    in place and returns the call to check."""

    name: str
    seed: Callable[[Path], None]
    case: Callable[[Callable, Path], Callable[[], Any]]


def tiny_splits():
    """A 2-view 8x8 synthetic dataset with every buffer (depth, mask, normals, labels)."""
    from scene3d.data.dataset import make_multiview_dataset
    from scene3d.data.synthetic import make_world

    return make_multiview_dataset(make_world(0), n_train=2, n_val=0, n_test=1, width=8, height=8, seed=0)


def _seed_blender(folder: Path) -> None:
    from scene3d.data.formats import save_blender

    save_blender(tiny_splits(), folder)


def _seed_nerfstudio(folder: Path) -> None:
    from scene3d.data.formats import save_nerfstudio

    save_nerfstudio(tiny_splits(), folder)


def _is_4x4(value: Any) -> bool:
    """A list of 4 lists of 4 entries (whatever they hold): a pose `_bend_pose` can bend."""
    return isinstance(value, list) and len(value) == 4 and all(isinstance(r, list) and len(r) == 4 for r in value)


def _json_mutation(draw, doc: dict) -> Any:
    """One structural change of a transforms document (in place; returns the document)."""
    frames = doc.get("frames") if isinstance(doc.get("frames"), list) else []
    targets = [doc] + [f for f in frames if isinstance(f, dict)]
    target = draw(st.sampled_from(targets))
    keys = sorted(target) or ["x"]
    kind = draw(st.sampled_from(["drop", "value", "path", "matrix", "pose", "extra", "number", "frames", "top"]))
    if kind == "drop":
        target.pop(draw(st.sampled_from(keys)), None)
    elif kind == "value":
        target[draw(st.sampled_from(keys))] = draw(JSON_VALUES)
    elif kind == "path":
        path_keys = [k for k in keys if k.endswith("path") or k.endswith("filenames")] or ["file_path"]
        target[draw(st.sampled_from(path_keys))] = draw(BAD_PATHS)
    elif kind == "matrix":
        rows, cols = draw(st.integers(0, 5)), draw(st.integers(0, 5))
        target["transform_matrix"] = [[draw(_SCALARS.filter(lambda v: not isinstance(v, str)) | st.floats())
                                       for _ in range(cols)] for _ in range(rows)]
    elif kind == "pose":  # a valid pose made non-rigid or too large for float32
        pose_of = [f for f in frames if isinstance(f, dict) and _is_4x4(f.get("transform_matrix"))]
        if pose_of:
            frame = draw(st.sampled_from(pose_of))
            _bend_pose(draw, frame)
    elif kind == "extra":
        target[draw(st.text(max_size=10))] = draw(JSON_VALUES)
    elif kind == "number":
        key = draw(st.sampled_from(["w", "h", "fl_x", "fl_y", "cx", "cy", "camera_angle_x",
                                    "depth_unit_scale_factor", "aabb", "background"]))
        target[key] = draw(st.sampled_from([0, -1, float("nan"), float("inf"), 1e308, 10**400, 2**63, 0.5, "1",
                                            1e39, -1e39, 3.5e38, 1e-50, 1e-46,
                                            [1, 2], [[0, 0, 0], [0, 0, 0]], [[float("nan")] * 3] * 2]))
    elif kind == "frames":
        doc["frames"] = draw(st.sampled_from([[], {}, None, [1, 2], [[]], frames[:1] * 3, "frames"]))
    else:
        return draw(st.sampled_from([[], 1, "x", None, [doc]]))
    return doc


def _bend_pose(draw, frame: dict) -> None:
    """Shear, scale, mirror, make projective, overflow or shrink the frame's 4x4 `transform_matrix`."""
    try:
        m = np.array(frame["transform_matrix"], dtype=float)
    except (TypeError, ValueError):
        return
    change = draw(st.sampled_from(["shear", "scale", "mirror", "projective", "overflow", "tiny"]))
    if change == "shear":
        m[0, 1] += draw(st.floats(1e-4, 1.0))
    elif change == "scale":
        m[:3, :3] *= draw(st.floats(0.5, 2.0))
    elif change == "mirror":
        m[:3, 0] *= -1
    elif change == "projective":
        m[3, :3] = draw(st.sampled_from([[0.0, 0.1, 0.0], [1e-3, 0.0, 0.0]]))
    elif change == "overflow":
        m[draw(st.integers(0, 2)), 3] = draw(st.sampled_from([1e39, -3.5e38, 1e300]))
    else:
        m[:3, :3] *= 1e-50
    frame["transform_matrix"] = m.tolist()


def _transforms_case(json_name: str) -> Callable:
    def case(draw, folder: Path) -> Callable[[], Any]:
        from scene3d.data.formats import load_dataset

        path = folder / json_name
        doc = json.loads(path.read_text())
        mode = draw(st.sampled_from(["structure", "structure", "structure", "text", "outside"]))
        if mode == "structure":
            for _ in range(draw(st.integers(1, 3))):
                doc = _json_mutation(draw, doc) if isinstance(doc, dict) else doc
            path.write_text(json.dumps(doc))
        elif mode == "text":
            path.write_bytes(draw(damaged_bytes(path.read_bytes())))
        else:  # a symlink out of the folder, named like a file the frame uses
            image = sorted(folder.rglob("*.png"))[0]
            (folder.parent / "outside.png").write_bytes(image.read_bytes())
            link = folder / "link.png"
            link.unlink(missing_ok=True)
            link.symlink_to(folder.parent / "outside.png")
            doc["frames"][0]["file_path"] = "link.png"
            path.write_text(json.dumps(doc))
        return lambda: load_dataset(folder, "train")

    return case


def _buffers_case(draw, folder: Path) -> Callable[[], Any]:
    """Damage one image, depth map, mask, normal map or label image of a Blender dataset."""
    from scene3d.data.formats import load_dataset

    files = sorted(p for p in (folder / "train").iterdir() if p.is_file())
    victim = draw(st.sampled_from(files))
    raw = victim.read_bytes()
    kind = draw(st.sampled_from(["bytes", "bytes", "array", "image", "huge_png", "swap", "frames", "special"]))
    if kind == "bytes":
        victim.write_bytes(draw(damaged_bytes(raw)))
    elif kind == "array":  # a well-formed .npy of the wrong shape, dtype or values
        shape = draw(st.sampled_from([(8, 8), (8, 8, 3), (4, 4), (8, 8, 1), (0,), (), (8, 8, 4), (2, 8, 8)]))
        dtype = draw(st.sampled_from(["<f4", ">f4", "<f8", "<i8", "|b1", "<c8", "<U3", "|u1", "<f2"]))
        fill = draw(st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -1.0]))
        arr = np.full(shape, fill if np.dtype(dtype).kind in "fc" else 1).astype(dtype)
        if draw(st.booleans()):
            arr = np.array([{"a": 1}], dtype=object)
        target = victim.with_suffix(".npy")
        with open(target, "wb") as f:
            np.lib.format.write_array(f, arr, allow_pickle=True)
        if target != victim:
            victim.unlink()
            target.rename(victim)
    elif kind == "image":  # a well-formed image of the wrong size, channels or bit depth
        import imageio.v3 as iio

        h, w = draw(st.sampled_from([(8, 8), (4, 8), (8, 4), (1, 1), (16, 16)]))
        ch = draw(st.sampled_from([None, 2, 3, 4]))
        dtype = draw(st.sampled_from([np.uint8, np.uint16]))
        shape = (h, w) if ch is None else (h, w, ch)
        if ch == 2 or (dtype == np.uint16 and ch in (3, 4)):
            dtype = np.uint8
        iio.imwrite(victim.with_name("tmp.png"), np.zeros(shape, dtype=dtype), extension=".png")
        victim.with_name("tmp.png").replace(victim)
    elif kind == "huge_png":
        size = draw(st.sampled_from([(100000, 100000), (2**31 - 1, 1), (1, 2**31 - 1), (20000, 20000)]))
        victim.write_bytes(png_with_size(raw, *size))
    elif kind == "frames":  # an animated PNG or GIF, or a multi-page TIFF, under the image's name
        from PIL import Image

        frame = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
        fmt = draw(st.sampled_from(["PNG", "GIF", "TIFF"]))
        frame.save(victim, format=fmt, save_all=True, append_images=[frame] * draw(st.integers(1, 5)))
    elif kind == "special":
        special_file(draw, victim)
    else:
        other = draw(st.sampled_from(files))
        victim.write_bytes(other.read_bytes())
    return lambda: load_dataset(folder, "train")


def special_file(draw, path: Path, kinds: tuple[str, ...] = ("fifo", "dev_zero", "folder", "loop")) -> None:
    """Replace `path` by a FIFO, a symlink to /dev/zero, a folder or a symlink loop (one of `kinds`)."""
    kind = draw(st.sampled_from(kinds))
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(path.name)


def _seed_ply(folder: Path) -> None:
    import torch

    from scene3d.gaussians.ply import write_ply
    from scene3d.gaussians.scene import GaussianScene

    g = torch.Generator().manual_seed(0)
    scene = GaussianScene.from_points(torch.randn(6, 3, generator=g), torch.rand(6, 3, generator=g), sh_degree=1)
    write_ply(folder / "scene.ply", scene)


def _ply_case(draw, folder: Path) -> Callable[[], Any]:
    """A damaged PLY, read as 3D Gaussians or by the viewer's reader of any PLY (Gaussians, mesh, points)."""
    from scene3d.gaussians.ply import read_ply
    from viewer.adapters.geometry import open_ply

    read = draw(st.sampled_from([read_ply, open_ply]))
    path = folder / "scene.ply"
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines, body = raw[:end].decode().splitlines(), raw[end:]
    kind = draw(st.sampled_from(["header", "header", "count", "body", "bytes", "ascii"]))
    if kind == "header":
        for _ in range(draw(st.integers(1, 3))):
            op = draw(st.sampled_from(["drop", "replace", "insert", "duplicate", "swap"]))
            i = draw(st.integers(0, len(lines) - 1))
            if op == "drop":
                lines.pop(i)
            elif op == "replace":
                lines[i] = draw(st.sampled_from(["format binary_big_endian 1.0", "format ascii 1.0", "format x",
                                                 "element vertex", "element vertex -1", "element face 3",
                                                 "property float", "property list uchar int idx",
                                                 "property list int uint vertex_indices",
                                                 "property list float int vertex_indices",
                                                 "property float rot_x", "property double x", "property uchar opacity",
                                                 "property float scale_7", "property int f_rest_0", "comment hi",
                                                 "bogus line"]) | st.text(max_size=30).filter(lambda t: "\n" not in t))
            elif op == "insert":
                lines.insert(i, draw(st.sampled_from(["property float feat_0", "element face 0", "element face 2",
                                                      "property list uchar int vertex_indices",
                                                      "property float x", "property float f_rest_99"])))
            elif op == "duplicate":
                lines.insert(i, lines[i])
            else:
                j = draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
    elif kind == "count":
        n = draw(st.sampled_from([0, 1, 5, 7, 2**31, 2**40, 2**62, 10**15, 10**30, 99999999999]))
        lines = [f"element vertex {n}" if line.startswith("element vertex") else line for line in lines]
    elif kind == "body":
        body = draw(damaged_bytes(body))
    elif kind == "bytes":
        path.write_bytes(draw(damaged_bytes(raw)))
        return lambda: read(path)
    else:  # ascii body, possibly with garbage tokens or non-finite numbers
        lines = [line.replace("binary_little_endian", "ascii") for line in lines]
        tokens = draw(st.lists(st.sampled_from(["0", "1.5", "nan", "inf", "-inf", "1e400", "x", "\xff", "--"]),
                               max_size=60))
        body = " ".join(tokens).encode("utf-8", errors="replace")
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", errors="replace") + body)
    return lambda: read(path)


def _seed_checkpoint(folder: Path) -> None:
    import torch

    from scene3d.checkpoint import save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(folder / "c.safetensors", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                               "rng": torch.get_rng_state(), "step": 7}, {"lr": 1e-3})


def _rewrite_header(raw: bytes, change: Callable[[dict], Any]) -> bytes:
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header = change(header) or header
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + raw[8 + n :]


def _checkpoint_case(draw, folder: Path) -> Callable[[], Any]:
    import torch

    from scene3d.checkpoint import load_checkpoint, restoring

    path = folder / "c.safetensors"
    raw = path.read_bytes()
    kind = draw(st.sampled_from(["bytes", "header_length", "tensor", "tensor", "metadata", "metadata"]))
    if kind == "bytes":
        raw = draw(damaged_bytes(raw))
    elif kind == "header_length":
        raw = draw(st.sampled_from([2**63, 2**40, len(raw), 0, 1, 2**64 - 1])).to_bytes(8, "little") + raw[8:]
    elif kind == "tensor":  # wrong dtype, shape or offsets in the safetensors header
        dtype = draw(st.sampled_from(["F32", "F64", "I64", "BOOL", "F16", "U8", "XX", 3]))
        shape = draw(st.sampled_from([[2, 3], [3, 2], [6], [], [0], [2**40], [-1], "x"]))
        offsets = draw(st.sampled_from([None, [0, 24], [0, 2**40], [24, 0], [0, 1], "x"]))

        def change(h):
            name = draw(st.sampled_from(sorted(k for k in h if k != "__metadata__")))
            h[name]["dtype"] = dtype
            h[name]["shape"] = shape
            if offsets is not None:
                h[name]["data_offsets"] = offsets

        raw = _rewrite_header(raw, change)
    else:
        key = draw(st.sampled_from(["format", "skeleton", "config", "other"]))
        value = draw(st.one_of(JSON_VALUES.map(json.dumps), st.text(max_size=30),
                               st.sampled_from(['{"__tensor__": 5}', '{"__tuple__": 5}', '{"__tensor__": [1]}',
                                                '[' * 5000, '{"model": {"__tensor__": "nope"}}', "[1, 2]"])))

        def change(h):
            h.setdefault("__metadata__", {})[key] = value

        raw = _rewrite_header(raw, change)
    path.write_bytes(raw)

    def load():
        state, _ = load_checkpoint(path)
        model = torch.nn.Linear(3, 2)
        with restoring(path, "model"):
            model.load_state_dict(state["model"])
            torch.optim.Adam(model.parameters()).load_state_dict(state["optimizer"])

    return load


def _seed_run_dir(folder: Path) -> None:
    """A field run (checkpoint with its spec) and a Gaussian run, as the viewer opens them."""
    import torch

    from scene3d.fields.base import build_field, field_spec
    from scene3d.gaussians.scene import GaussianScene
    from scene3d.runs import RunDir

    field = build_field("grid", resolution=4, aabb=(-1, -1, -1, 1, 1, 1))
    run = RunDir(folder / "fieldrun")
    run.save_config({"field": "grid", "steps": 1})
    run.log_scalars(1, {"train/loss": 0.5})
    run.close()
    run.save_checkpoint(1, {"field": field.state_dict()}, {**field_spec(field), "fit": {"n_samples": 4}})
    scene = GaussianScene.from_points(torch.zeros(3, 3), torch.rand(3, 3), sh_degree=0)
    RunDir(folder / "splatrun").save_checkpoint(1, {"scene": dict(scene.params)}, {"name": "x"})


def _run_dir_case(draw, folder: Path) -> Callable[[], Any]:
    from viewer.inputs import open_input
    from viewer.panels.training import ScalarLog, metrics_markdown

    run = folder / draw(st.sampled_from(["fieldrun", "splatrun"]))
    ckpt = next((run / "checkpoints").glob("step_*.safetensors"))
    victim = draw(st.sampled_from(["checkpoint", "checkpoint", "config", "scalars", "metrics", "layout"]))
    if victim == "checkpoint":
        raw = ckpt.read_bytes()
        if draw(st.booleans()):
            raw = draw(damaged_bytes(raw))
        else:  # valid safetensors, config or state changed
            def change(h):
                meta = h["__metadata__"]
                config = json.loads(meta["config"])
                key = draw(st.sampled_from(sorted(config) + ["config"]))
                config[key] = draw(JSON_VALUES)
                if isinstance(config.get("config"), dict) and draw(st.booleans()):
                    config["config"] = {**config["config"], draw(st.sampled_from(["resolution", "aabb", "sh_degree"])):
                                        draw(st.sampled_from([0, -1, 2**20, "x", [1], None, float("nan")]))}
                meta["config"] = json.dumps(config)
                names = sorted(k for k in h if k != "__metadata__")
                if draw(st.booleans()):
                    h[draw(st.sampled_from(names))]["shape"] = draw(st.sampled_from([[1], [2, 2], [0]]))

            raw = _rewrite_header(raw, change)
        ckpt.write_bytes(raw)
    elif victim == "config":
        (run / "config.json").write_text(json.dumps(draw(JSON_VALUES)))
    elif victim == "scalars":
        (run / "scalars.jsonl").write_bytes(draw(damaged_bytes((run / "scalars.jsonl").read_bytes()))
                                            if (run / "scalars.jsonl").exists() else draw(st.binary(max_size=200)))
    elif victim == "metrics":
        (run / "metrics.json").write_text(json.dumps(draw(JSON_VALUES)))
    else:
        ckpt.rename(ckpt.with_name(draw(st.sampled_from(["step_x.safetensors", "step_0000002.safetensors",
                                                          "step_-1.safetensors", "step_9999999999.safetensors"]))))

    def load():
        content = open_input(run)
        log = ScalarLog(run / "scalars.jsonl")
        log.poll()
        metrics_markdown(run / "metrics.json")
        if content.source is not None:
            from scene3d.cameras import orbit_cameras

            content.source.render(orbit_cameras(1, 3.0, width=4, height=4), content.source.buffers[0])

    return load


def _seed_image_folder(folder: Path) -> None:
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    (folder / "annotations").mkdir()
    for i in range(3):
        iio.imwrite(folder / "images" / f"im{i}.png", rng.integers(0, 255, (12, 10, 3), dtype=np.uint8))
        iio.imwrite(folder / "annotations" / f"im{i}.png", rng.integers(0, 4, (12, 10), dtype=np.uint8))


def _image_folder_case(draw, folder: Path) -> Callable[[], Any]:
    import imageio.v3 as iio

    from avfm.data import image_folder

    sub = draw(st.sampled_from(["images", "annotations"]))
    files = sorted((folder / sub).iterdir())
    victim = draw(st.sampled_from(files))
    kind = draw(st.sampled_from(["bytes", "image", "image", "huge_png", "remove", "dir", "jpg"]))
    if kind == "bytes":
        victim.write_bytes(draw(damaged_bytes(victim.read_bytes())))
    elif kind == "image":
        h, w = draw(st.sampled_from([(12, 10), (1, 1), (3, 40), (40, 3), (2, 2)]))
        ch = draw(st.sampled_from([None, 2, 3, 4]))
        dtype = np.uint16 if draw(st.booleans()) and ch is None else np.uint8
        shape = (h, w) if ch is None else (h, w, ch)
        iio.imwrite(victim, np.full(shape, draw(st.integers(0, 255)), dtype=dtype), extension=".png")
    elif kind == "huge_png":
        victim.write_bytes(png_with_size(victim.read_bytes(), 60000, 60000))
    elif kind == "remove":
        for f in files:
            f.unlink()
    elif kind == "dir":
        (folder / sub / "sub.png").mkdir(exist_ok=True)
    else:
        victim.rename(victim.with_suffix(".jpg"))
    resolution = draw(st.sampled_from([8, 1, 16]))
    return lambda: image_folder(folder, resolution)


def _seed_colmap(folder: Path) -> None:
    """A 3-image COLMAP project (OPENCV camera, 20 points) in both encodings: sparse/0 (.bin), text/ (.txt)."""
    import imageio.v3 as iio
    import torch

    from scene3d.cameras import look_at
    from scene3d.data.colmap import ColmapCamera, ColmapImage, write_model
    from scene3d.rotations import rotmat_to_quat

    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    c2w = look_at(torch.tensor([[3.0, 0.0, 1.0], [0.0, 3.0, 1.0], [-3.0, 0.0, 1.0]]), torch.zeros(3))
    images = []
    for i in range(3):
        iio.imwrite(folder / "images" / f"{i}.png", rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
        w2c = torch.linalg.inv(c2w[i].double())
        images.append(ColmapImage(i + 1, tuple(rotmat_to_quat(w2c[:3, :3]).tolist()), tuple(w2c[:3, 3].tolist()),
                                  1, f"{i}.png"))
    cameras = [ColmapCamera(1, "OPENCV", 8, 6, (7.0, 7.0, 4.0, 3.0, -0.1, 0.01, 0.0, 0.0))]
    points, colors = rng.normal(size=(20, 3)), rng.integers(0, 255, (20, 3)).astype(np.uint8)
    write_model(folder / "sparse" / "0", cameras, images, points, colors, binary=True)
    write_model(folder / "text", cameras, images, points, colors, binary=False)


def _colmap_case(draw, folder: Path) -> Callable[[], Any]:
    """Damage one file of the binary or the text model (bytes, or text lines), or an image it names."""
    from scene3d.data.formats import load_dataset

    binary = draw(st.booleans())
    if not binary:  # the text model takes the binary one's place
        shutil.rmtree(folder / "sparse")
        (folder / "text").rename(folder / "sparse")
    ext = ".bin" if binary else ".txt"
    victim = folder / "sparse" / "0" / f"{draw(st.sampled_from(['cameras', 'images', 'points3D']))}{ext}" \
        if binary else folder / "sparse" / f"{draw(st.sampled_from(['cameras', 'images', 'points3D']))}{ext}"
    kind = draw(st.sampled_from(["bytes", "bytes", "lines", "remove", "image"]))
    if kind == "bytes" or (kind == "lines" and binary):
        victim.write_bytes(draw(damaged_bytes(victim.read_bytes())))
    elif kind == "lines":
        lines = victim.read_text().splitlines()
        at = draw(st.integers(0, len(lines) - 1))
        words = lines[at].split()
        if words:
            words[draw(st.integers(0, len(words) - 1))] = draw(st.sampled_from(
                ["nan", "inf", "-1", "0", "x", "1e400", "99999999999999999999", "FULL_OPENCV", "../0.png", ""]))
        lines[at] = " ".join(words)
        victim.write_text("\n".join(lines) + "\n")
    elif kind == "remove":
        victim.unlink()
    else:
        image = folder / "images" / f"{draw(st.integers(0, 2))}.png"
        image.write_bytes(draw(damaged_bytes(image.read_bytes())))
    split = draw(st.sampled_from(["train", "test"]))
    return lambda: load_dataset(folder, split)


# cross-run resumes ----------------------------------------------------------------------------------
@dataclass
class ToyJob:
    """The job config of `ToyTrainable` runs: its identity is these fields and `data`'s fingerprint."""

    data: Path
    seed: int = 0
    lr: float = 0.1


class ToyTrainable:
    """Three weights pulled towards 1 by SGD: a `scene3d.train.Trainable` cheap enough to fuzz resumes."""

    name = "toy"

    def __init__(self, job: ToyJob):
        import torch

        self.w = torch.nn.Parameter(torch.full((3,), float(job.seed)))
        self.opt = torch.optim.SGD([self.w], lr=job.lr)

    def loss(self, step: int):
        self.opt.zero_grad()
        loss = ((self.w - 1) ** 2).sum()
        return loss, {"loss": loss.item()}

    def guarded_parameters(self):
        return [("w", self.w)]

    def apply(self, step: int) -> dict[str, float]:
        self.opt.step()
        return {}

    def validate(self) -> dict[str, float]:
        return {"error": float((self.w.detach() - 1).abs().max())}

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.detach().clone(), "optimizer": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w.data.copy_(state["w"])
        self.opt.load_state_dict(state["optimizer"])

    def checkpoint_config(self) -> dict[str, Any]:
        return {}

    def finish(self, run, result) -> dict[str, Any]:
        return self.validate()


def toy_fit(folder: Path, job: ToyJob, steps: int) -> Any:
    """`scene3d.train.fit` of a `ToyTrainable` in `folder/run` (checkpoints every 2 steps)."""
    from scene3d.runs import RunDir
    from scene3d.train import RunConfig, fit

    config = RunConfig(checkpoint_every=2, log_every=1, eval_every=2, progress=False)
    return fit(ToyTrainable(job), RunDir(folder / "run"), config, steps, job_config=job)


def _seed_resume(folder: Path) -> None:
    (folder / "data.json").write_text(json.dumps({"views": [1, 2, 3]}))


def _resume_case(draw, folder: Path) -> Callable[[], Any]:
    """Resume a toy run trained here to step 4 (checkpoints 2 and 4) with another job config or input
    file, or after its newest checkpoint's step, loop state or weights were changed or it was
    replaced by a special file."""
    import torch

    from scene3d.checkpoint import load_checkpoint, save_checkpoint

    job = ToyJob(folder / "data.json")
    toy_fit(folder, job, 4)
    newest = folder / "run" / "checkpoints" / "step_0000004.safetensors"
    kind = draw(st.sampled_from(["config", "data", "loop", "step", "nan", "special"]))
    if kind == "config":
        job = ToyJob(job.data, seed=draw(st.sampled_from([0, 1, -7])), lr=draw(st.sampled_from([0.1, 0.2])))
    elif kind == "data":
        job.data.write_text(json.dumps(draw(JSON_VALUES)))
    elif kind in ("loop", "step", "nan"):
        state, config = load_checkpoint(newest)
        if kind == "loop":
            key = draw(st.sampled_from(["identity", "timeline", "elapsed", "scalars_bytes", "eval_pending", "other"]))
            state["loop"][key] = draw(JSON_VALUES)
        elif kind == "step":
            state["step"] = draw(_SCALARS)
        else:
            state["w"] = torch.tensor([1.0, draw(st.sampled_from([float("nan"), float("inf")])), 0.0])
        save_checkpoint(newest, state, config)
    else:  # (a folder there would block the resumed run's own write: an OutputError, without a field)
        special_file(draw, newest, ("fifo", "dev_zero", "loop"))
    return lambda: toy_fit(folder, job, 6)


READERS: dict[str, FuzzReader] = {
    "colmap": FuzzReader("colmap", _seed_colmap, _colmap_case),
    "blender": FuzzReader("blender", _seed_blender, _transforms_case("transforms_train.json")),
    "nerfstudio": FuzzReader("nerfstudio", _seed_nerfstudio, _transforms_case("transforms.json")),
    "images_depth_masks": FuzzReader("images_depth_masks", _seed_blender, _buffers_case),
    "ply": FuzzReader("ply", _seed_ply, _ply_case),
    "checkpoint": FuzzReader("checkpoint", _seed_checkpoint, _checkpoint_case),
    "run_dir": FuzzReader("run_dir", _seed_run_dir, _run_dir_case),
    "image_folder": FuzzReader("image_folder", _seed_image_folder, _image_folder_case),
    "resume": FuzzReader("resume", _seed_resume, _resume_case),
}


def fuzz_reader(name: str, n_examples: int = 200, seed: int | None = 0) -> tuple[list[Outcome], dict[str, int]]:
    """Run `n_examples` hypothesis cases against one reader (derandomized for a given `seed`);
    returns (failures, counts) with counts {"cases", "loaded", "errors"}."""
    reader = READERS[name]
    failures: list[Outcome] = []
    counts = {"cases": 0, "loaded": 0, "errors": 0}
    with tempfile.TemporaryDirectory(prefix=f"fuzz_{name}_") as tmp:
        pristine = Path(tmp) / "pristine"
        pristine.mkdir()
        reader.seed(pristine)

        @seed_decorator(seed)
        @settings(max_examples=n_examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
        @given(st.data())
        def run(data):
            work = Path(tmp) / "case" / "data"
            shutil.rmtree(work.parent, ignore_errors=True)
            shutil.copytree(pristine, work, symlinks=True)
            load = reader.case(data.draw, work)
            outcome = check_case(load)
            counts["cases"] += 1
            if outcome.ok:
                counts["loaded" if outcome.kind == "loaded" else "errors"] += 1
            else:
                failures.append(outcome)

        run()
    return failures, counts


def seed_decorator(seed: int | None):
    from hypothesis import seed as hypothesis_seed

    return (lambda f: f) if seed is None else hypothesis_seed(seed)


def summarize(failures: list[Outcome]) -> dict[str, int]:
    """Failures counted by kind (exception type, "hang", "memory", "malformed error")."""
    out: dict[str, int] = {}
    for f in failures:
        out[f.kind] = out.get(f.kind, 0) + 1
    return out


