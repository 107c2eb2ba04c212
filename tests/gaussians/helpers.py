import math

import torch

from scene3d.cameras import Cameras, look_at
from scene3d.gaussians import GaussianScene


def random_scene(n: int, seed: int = 0, sh_degree: int = 2, feature_dim: int | None = None,
                 dtype: torch.dtype = torch.float32, scale: float = 0.15) -> GaussianScene:
    """Anisotropic, randomly rotated Gaussians in [-1,1]^3 with varied opacities."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * 2 - 1
    quats = torch.randn(n, 4, generator=g)
    log_scales = math.log(scale) + 0.5 * torch.randn(n, 3, generator=g)
    opacity_logits = torch.randn(n, generator=g) * 1.5
    if feature_dim is not None:
        scene = GaussianScene(means, quats, log_scales, opacity_logits,
                              features=torch.randn(n, feature_dim, generator=g))
    else:
        k = (sh_degree + 1) ** 2
        scene = GaussianScene(means, quats, log_scales, opacity_logits,
                              sh0=torch.randn(n, 1, 3, generator=g) * 0.5,
                              shN=torch.randn(n, k - 1, 3, generator=g) * 0.2)
    return scene.to(dtype)


def two_cameras(width: int = 37, height: int = 29, dtype: torch.dtype = torch.float32) -> Cameras:
    eyes = torch.tensor([[3.0, 0.5, 1.0], [-0.5, -2.8, 1.6]], dtype=dtype)
    c2w = look_at(eyes, torch.zeros(3, dtype=dtype))
    return Cameras.from_fov(c2w, math.radians(55.0), width, height)


