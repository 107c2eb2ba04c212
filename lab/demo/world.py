"""The first `make demo` stage: the default synthetic world as a Blender-layout dataset with a contact sheet."""

from __future__ import annotations

from pathlib import Path

from scene3d.data.generate import WorldDatasetConfig, write_world_dataset


def run_stage(out: Path, quick: bool) -> dict:
    """Write `out/world/` (train / val / test views, depth, normals, labels, contact_sheet.png)."""
    size = 32 if quick else 64
    config = WorldDatasetConfig(out=out / "world", seed=0, n_train=24 if quick else 100, n_val=4 if quick else 8,
                                n_test=6 if quick else 16, width=size, height=size, overwrite=True)
    summary = write_world_dataset(config)
    return {"dataset": str(config.out), "views": summary["views"], "contact_sheet": summary["contact_sheet"]}
