"""Per-step ablation of volume distillation (`lab.ablate.pvd`): one fixed teacher, the same student
trained for a few hundred steps under each variant and fitted from scratch at the same batch.

    python scripts/ablate_pvd.py --teacher outputs/fields/hashgrid --student mlp --steps 300
"""

import tyro

from lab.ablate.pvd import AblateConfig, run_ablation
from scene3d.cli import run_cli

if __name__ == "__main__":
    run_cli(lambda: run_ablation(tyro.cli(AblateConfig)))
