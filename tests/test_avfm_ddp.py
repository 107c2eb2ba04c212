"""torchrun DDP with gloo, 2 processes: training runs and the replicas stay identical
(`train` ends with `assert_replicas_in_sync`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = """
import sys
import torch.distributed as dist
from avfm.train import DataConfig, OptimConfig, TeacherConfig, TrainConfig, train
from scene3d.train import RunConfig
cfg = TrainConfig(data=DataConfig(source="toy", n_train=16, n_val=4, resolution=64),
                  teacher=TeacherConfig(name="random_vit"), optim=OptimConfig(lr=2e-3, warmup_steps=2),
                  steps=3, batch_size=2,
                  run=RunConfig(name="ddp", output_root=sys.argv[1], checkpoint_every=3, progress=False))
train(cfg)  # ends with assert_replicas_in_sync: raises if the ranks' parameters differ
dist.barrier()
"""


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29561", str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "avfm" / "ddp" / "checkpoints" / "step_0000003.safetensors").is_file()


def test_average_gradients_is_a_no_op_without_ddp():
    from avfm.train import average_gradients

    lin = torch.nn.Linear(2, 2)
    lin(torch.ones(1, 2)).sum().backward()
    before = lin.weight.grad.clone()
    average_gradients(lin)
    assert torch.equal(lin.weight.grad, before)
