"""Write a synthetic world to disk as a Blender or nerfstudio dataset, with a contact sheet."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch

from scene3d.checkpoint import atomic_write_json
from scene3d.config import Range, check
from scene3d.data.dataset import ViewSampling, make_multiview_dataset
from scene3d.data.formats import save_blender, save_nerfstudio
from scene3d.data.synthetic import CLASS_NAMES, WorldConfig, make_world
from scene3d.errors import DataError
from scene3d.runs import config_to_dict
from scene3d.viz import contact_sheet, save_png


@dataclass
class WorldDatasetConfig:
    """A synthetic multi-view dataset: which world, which views, which file layout."""

    out: Path = Path("outputs/worlds/default")
    seed: int = 0
    n_train: Annotated[int, Range(1, 100_000)] = 60
    n_val: Annotated[int, Range(0, 100_000)] = 8
    n_test: Annotated[int, Range(0, 100_000)] = 16
    width: Annotated[int, Range(1, 8192)] = 64
    height: Annotated[int, Range(1, 8192)] = 64
    format: Literal["blender", "nerfstudio"] = "blender"  # transforms_{split}.json, or one transforms.json
    overwrite: bool = False
    world: WorldConfig = field(default_factory=WorldConfig)
    views: ViewSampling = field(default_factory=ViewSampling)

    def __post_init__(self) -> None:
        check(self)


def write_world_dataset(config: WorldDatasetConfig, progress: bool = True) -> dict:
    """Render and write the dataset; returns a summary (also written as `world.json`)."""
    out = Path(config.out)
    if out.exists() and any(out.iterdir()) and not config.overwrite:
        raise DataError(out, None, "folder exists and is not empty (pass --overwrite to replace files in it)")
    world = make_world(config.seed, config.world)
    splits = make_multiview_dataset(world, config.n_train, config.n_val, config.n_test, config.width,
                                    config.height, seed=config.seed, sampling=config.views)
    save = save_blender if config.format == "blender" else save_nerfstudio
    save(splits, out, progress=progress)
    shown = splits.get("test", splits["train"])
    test = shown.subset(slice(0, 6))
    sheet = save_png(out / "contact_sheet.png",
                     contact_sheet(test.images, test.depths, test.normals, test.semantic, test.masks))
    pixels = torch.cat([ds.semantic.flatten() for ds in splits.values()])
    summary = {
        "config": config_to_dict(config),
        "objects": world.describe(),
        "aabb": world.aabb.tolist(),
        "views": {split: len(ds) for split, ds in splits.items()},
        "class_pixel_fraction": {name: float((pixels == i).float().mean()) for i, name in enumerate(CLASS_NAMES)},
        "contact_sheet": str(sheet),
    }
    atomic_write_json(out / "world.json", json.loads(json.dumps(summary)))
    return summary
