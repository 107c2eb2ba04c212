"""Write a procedural synthetic world as a multi-view dataset (Blender or nerfstudio layout).

    python scripts/make_world.py --out outputs/worlds/w0 --seed 0 --width 128 --height 128
"""

import tyro

from scene3d.cli import run_cli
from scene3d.data.generate import WorldDatasetConfig, write_world_dataset


def main(config: WorldDatasetConfig) -> None:
    summary = write_world_dataset(config)
    print(f"wrote {sum(summary['views'].values())} views to {config.out} ({summary['contact_sheet']})")


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(WorldDatasetConfig)))
