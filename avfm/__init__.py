"""avfm: CanViT-style active-vision foundation model (canvas attention over glimpses) and its
passive-to-active dense latent distillation. See docs/avfm.md."""

from avfm.glimpse import POLICIES, Viewpoint, build_policy, extract_glimpse
from avfm.model import CONFIGS, CanViT, CanViTConfig, State, build_model, count_params
from avfm.pretrained import load_pretrained
from avfm.teachers import TEACHERS, build_teacher

__all__ = [
    "CONFIGS",
    "POLICIES",
    "TEACHERS",
    "CanViT",
    "CanViTConfig",
    "State",
    "Viewpoint",
    "build_model",
    "build_policy",
    "build_teacher",
    "count_params",
    "extract_glimpse",
    "load_pretrained",
]
