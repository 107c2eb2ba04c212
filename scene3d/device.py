"""Device choice for every run and tool: a `device` option of "auto" means CUDA when present, else the CPU;
any other value ("cpu", "cuda", "cuda:1") is taken as it is."""

from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """The torch device an option names ("auto": CUDA when available, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
