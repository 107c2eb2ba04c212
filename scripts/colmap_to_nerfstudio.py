"""Write nerfstudio's transforms.json (and sparse_pc.ply) for a COLMAP project (images/ + sparse/0).

    python scripts/colmap_to_nerfstudio.py path/to/colmap_project
"""

from pathlib import Path

import tyro

from scene3d.cli import run_cli
from scene3d.data.colmap import colmap_to_transforms


def main(project: Path, /, out: Path | None = None) -> None:
    """project: the COLMAP folder (or its sparse/0); out: where transforms.json goes (default: the folder
    holding images/)."""
    path = colmap_to_transforms(project, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(lambda: tyro.cli(main))
