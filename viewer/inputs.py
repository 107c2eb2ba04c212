"""The viewer's inputs: what `scripts/view.py PATH...` opens (a synthetic world, a dataset folder,
a run directory or a PLY file).

`open_input` turns one command-line string into `ViewerContent` (a renderable source, a dataset
whose cameras are drawn as frustums, a run directory whose scalars are plotted), or raises one
`DataError` naming the path and what is wrong with it; `open_inputs` opens several, one named scene
each (the viewer switches between them).

The renderers that live outside this module are listed here, explicitly: `RUN_ADAPTERS` find a
renderable checkpoint in a run directory (a SceneSource, or None when the run is not theirs) and
`FILE_ADAPTERS` open a scene file by suffix. To add one, pass your own tables, e.g.
`open_input(path, run_adapters=(*RUN_ADAPTERS, my_adapter))` or
`open_inputs(paths, file_adapters={**FILE_ADAPTERS, ".splat": open_splat})`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType

from avfm.data import IMAGE_SUFFIXES
from scene3d.cameras import Cameras, look_at, orbit_cameras
from scene3d.data.dataset import make_multiview_dataset
from scene3d.data.formats import load_dataset
from scene3d.data.synthetic import WorldConfig, make_world
from scene3d.errors import ConfigError, DataError
from scene3d.files import read_text
from viewer.adapters import fields as field_adapters
from viewer.adapters import gaussians, geometry
from viewer.content import ViewerContent
from viewer.sources import SceneSource, SyntheticSource

SYNTHETIC_PREFIX = "synthetic:"

RunAdapter = Callable[[Path], SceneSource | None]
FileAdapter = Callable[[Path], ViewerContent]

# The adapters that ship with the viewer (viewer modules: scene3d never imports viewer), tried in order.
RUN_ADAPTERS: tuple[RunAdapter, ...] = (field_adapters.FieldSource.from_run, gaussians.source_from_run)
FILE_ADAPTERS: Mapping[str, FileAdapter] = MappingProxyType({".ply": geometry.open_ply})


def open_input(spec: str | Path, images: Sequence[Path] = (), *, run_adapters: Sequence[RunAdapter] = RUN_ADAPTERS,
               file_adapters: Mapping[str, FileAdapter] = FILE_ADAPTERS) -> ViewerContent:
    """`synthetic:SEED`, a dataset folder (transforms*.json), a run directory (scalars.jsonl,
    config.json or checkpoints/) or a scene file (.ply). `images`: image files for the Glimpses panel
    of an active-vision run. `run_adapters` / `file_adapters` replace the shipped tables."""
    text = str(spec)
    if text.startswith(SYNTHETIC_PREFIX):
        return open_synthetic(text)
    path = Path(text)
    if not path.exists():
        raise DataError(path, None, "does not exist")
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise image_without_run(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix not in file_adapters:
            known = ", ".join(sorted(file_adapters)) or "none"
            raise DataError(path, None, f"the viewer cannot open {suffix or 'suffix-less'} files (it opens: {known})")
        return file_adapters[suffix](path)
    if path.is_dir() and (any(path.glob("transforms*.json"))):
        return open_dataset(path)
    if path.is_dir() and any((path / name).exists() for name in ("scalars.jsonl", "config.json", "checkpoints")):
        return open_run(path, images, run_adapters)
    raise DataError(path, None, "not a dataset folder (transforms*.json), a run directory (scalars.jsonl, "
                    "config.json, checkpoints/), a .ply file or synthetic:SEED")


def open_inputs(specs: Sequence[str | Path], *, run_adapters: Sequence[RunAdapter] = RUN_ADAPTERS,
                file_adapters: Mapping[str, FileAdapter] = FILE_ADAPTERS, canvit: Path | None = None
                ) -> list[ViewerContent]:
    """Several inputs in one viewer, one scene each, in the order given (e.g. a dataset and the run trained
    on it: ground truth against model). Image files go to the Glimpses panel of the active-vision runs
    among them, or of the published CanViT checkpoint `canvit`."""
    if canvit is not None:
        return [open_checkpoint(Path(canvit), specs)]
    if not specs:
        raise DataError(None, "PATH", "give at least one path or synthetic:SEED")
    images = [Path(str(s)) for s in specs if Path(str(s)).suffix.lower() in IMAGE_SUFFIXES]
    others = [s for s in specs if Path(str(s)) not in images]
    for image in images:
        if not image.is_file():
            raise DataError(image, None, "does not exist")
    if images and not any(is_avfm_run(Path(str(s))) for s in others):
        raise image_without_run(images[0])
    return [open_input(spec, images, run_adapters=run_adapters, file_adapters=file_adapters) for spec in others]


def open_checkpoint(folder: Path, specs: Sequence[str | Path]) -> ViewerContent:
    """A published CanViT checkpoint's Glimpses panel on image files (nothing else opens beside it)."""
    from viewer.panels.glimpse import glimpse_home, glimpse_panel_for_checkpoint

    images = [Path(str(s)) for s in specs]
    for image in images:
        if image.suffix.lower() not in IMAGE_SUFFIXES or not image.is_file():
            raise DataError(image, None, f"with --canvit, give image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    home, center = glimpse_home()
    return ViewerContent(f"CanViT {folder.name}", None, None, None, home, center,
                         [glimpse_panel_for_checkpoint(folder, images)])


def image_without_run(path: Path) -> DataError:
    return DataError(path, None, f"an image opens in the Glimpses panel of an active-vision run: give the run "
                     f"directory too (scripts/view.py outputs/avfm/RUN {path})")


def open_synthetic(spec: str, n_cameras: int = 12, thumb_size: int = 64) -> ViewerContent:
    """A procedural world plus `n_cameras` example training views drawn as frustums."""
    try:
        seed = int(spec[len(SYNTHETIC_PREFIX):])
    except ValueError:
        raise DataError(None, "PATH", f"expected synthetic:SEED with an integer seed, got {spec!r}") from None
    world = make_world(seed)
    views = make_multiview_dataset(world, n_train=n_cameras, n_val=0, n_test=0, width=thumb_size,
                                   height=thumb_size, seed=seed)["train"]
    home = orbit_cameras(1, 6.0, elevation_deg=35.0, fov_x_deg=55.0, width=640, height=480, target=(0, 0, 0.2))
    return ViewerContent(f"synthetic world {seed}", SyntheticSource(world), views, None, home, (0.0, 0.0, 0.2))


def open_dataset(path: Path) -> ViewerContent:
    """A Blender / nerfstudio dataset; a world we generated (`world.json`) is also rendered exactly."""
    dataset = load_dataset(path, "train")
    source = None
    if (path / "world.json").is_file():
        source = SyntheticSource(_world_from_summary(path / "world.json"), tuple(dataset.background.tolist()))
    center = dataset.aabb.mean(0)
    return ViewerContent(f"dataset {path.name}", source, dataset, None, overview_camera(dataset.cameras, center),
                         tuple(center.tolist()))


def overview_camera(cameras: Cameras, center, pull_back: float = 2.0) -> Cameras:
    """A camera behind the first one (`pull_back` times its distance to `center`), looking at
    `center` with a 55 degree field of view: the scene with the dataset's frustums in front of it."""
    eye = center + pull_back * (cameras.centers[0] - center)
    return Cameras.from_fov(look_at(eye[None], center), math.radians(55.0), 640, 480)


def open_run(path: Path, images: Sequence[Path] = (), run_adapters: Sequence[RunAdapter] = RUN_ADAPTERS
             ) -> ViewerContent:
    """A run directory: live scalars, a scene from the first of `run_adapters` that recognises a
    checkpoint (else its exported `mesh.ply`, drawn by the browser), and glimpse rollouts for an
    active-vision (avfm) run (on `images`, then its held-out scenes)."""
    source = next((s for adapter in run_adapters if (s := adapter(path)) is not None), None)
    content = ViewerContent(f"run {path.name}", source, None, path, None)
    if source is None and (path / "mesh.ply").is_file():
        mesh = geometry.open_ply(path / "mesh.ply")
        content.home, content.center, content.extra_panels = mesh.home, mesh.center, list(mesh.extra_panels)
    if is_avfm_run(path):
        from viewer.panels.glimpse import glimpse_home, glimpse_panel_for_run

        content.extra_panels.append(glimpse_panel_for_run(path, images))
        if content.home is None and content.source is None:
            content.home, content.center = glimpse_home()
    elif source is None and not content.extra_panels:
        content.note = (f"_run `{path.name}` holds no checkpoint or exported scene the viewer can render yet "
                        "(nothing but its training curves)_")
    return content


def is_avfm_run(path: Path) -> bool:
    """Whether `path` holds an `avfm.train` run: its config.json has the TrainConfig sections, and a checkpoint."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and {"model", "teacher", "optim", "s_min"} <= config.keys()
            and any((path / "checkpoints").glob("step_*.safetensors")))


def _world_from_summary(file: Path):
    """The world `scene3d.data.generate.write_world_dataset` described in its world.json."""
    try:
        config = json.loads(read_text(file, "file"))["config"]
        seed = int(config["seed"])
        known = {f.name for f in fields(WorldConfig)}
        world = {k: tuple(v) if isinstance(v, list) else v for k, v in config.get("world", {}).items() if k in known}
        return make_world(seed, WorldConfig(**world))
    except ConfigError as err:
        raise DataError(file, f"config.world.{err.field.removeprefix('--').replace('-', '_')}", err.problem) from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(file, "config", f"cannot rebuild the world from it ({err})") from None

