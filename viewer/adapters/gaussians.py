"""3D Gaussian scenes (`scene3d.gaussians`) in the viewer: rasterized server-side by our
rasterizer from the browser camera, and also drawn natively by viser's splat renderer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scene3d.cameras import Cameras
from scene3d.checkpoint import load_checkpoint
from scene3d.errors import CheckpointError, DataError
from scene3d.gaussians import GaussianScene, rasterize
from scene3d.gaussians.ply import read_ply
from scene3d.gaussians.sh import sh_to_rgb
from scene3d.runs import newest_loadable
from scene3d.viz import colorize_depth, pca_rgb
from viewer.content import ViewerContent, home_outside_box
from viewer.legends import depth_legend
from viewer.sources import CheckpointFollower, Frame, depth_range

RUN_PLY_NAMES = ("scene.ply", "splats.ply")  # a Gaussian run's final scene (fit_splats, distill_score)


def scene_bounds(scene: GaussianScene, quantile: float = 0.02, max_points: int = 2**20) -> torch.Tensor:
    """A box [2,3] around the bulk of the means (outliers beyond the 2% / 98% quantiles ignored), from
    at most `max_points` evenly strided means (`torch.quantile` takes at most 2^24 values)."""
    means = scene.means.detach().float()
    means = means[:: -(-len(means) // max_points)]
    return torch.stack([torch.quantile(means, quantile, dim=0), torch.quantile(means, 1 - quantile, dim=0)])


class GaussianSource:
    """A Gaussian scene: "splats" drawn by the browser (viser's splat renderer, sharp at the canvas's
    resolution) and the buffers our rasterizer renders on the server (`backend` "auto": gsplat on CUDA,
    the compiled CPU one elsewhere): rgb (or a feature PCA), depth, accumulation. Given a `follower`, a
    run still training shows its newest checkpoint in the server buffers (checked every two seconds);
    its default is then "rgb", which follows the run, where a finished scene's default is "splats"."""

    browser_buffers = ("splats",)

    def __init__(self, scene: GaussianScene, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 backend: str = "auto", follower: CheckpointFollower[GaussianScene] | None = None,
                 browser_first: bool = True):
        self.background, self.backend, self.follower = background, backend, follower
        self._set_scene(scene)
        color = "features" if scene.is_feature_scene else "rgb"
        server_side = (color, "depth", "accumulation")
        if scene.is_feature_scene:  # the browser would draw feature Gaussians grey
            self.buffers = server_side
        else:
            self.buffers = ("splats", *server_side) if browser_first else (color, "splats", *server_side[1:])

    def browser_panel(self, server, root: str) -> SplatPanel | None:
        """The browser-drawn splats under `root` (None for feature scenes)."""
        return None if self.scene.is_feature_scene else SplatPanel(server, self._given, root)

    def _set_scene(self, scene: GaussianScene) -> None:
        self._given = scene
        self.scene = scene.detached() if hasattr(scene, "detached") else scene
        self.aabb = scene_bounds(scene)

    @torch.no_grad()
    def render(self, cameras: Cameras, buffer: str) -> Frame:
        if self.follower is not None and (newest := self.follower.current) not in (None, self._given):
            self._set_scene(newest)
        device = self.scene.means.device
        background = None if self.scene.is_feature_scene else torch.tensor(self.background)
        out = rasterize(self.scene, cameras[0].to(device), self.backend, background=background)
        color, depth, alpha = out.colors[0].cpu(), out.depth[0].cpu(), out.alpha[0].cpu()
        solid, legend = alpha > 0.5, None
        if buffer in ("rgb", "splats"):  # "splats" on the server (a video, an export): our rasterizer's rgb
            image = color.clamp(0, 1)
        elif buffer == "features":
            image = pca_rgb(color, solid)
        elif buffer == "depth":
            near, far = depth_range(cameras, self.aabb)
            image, legend = colorize_depth(depth, solid, near, far), depth_legend(near, far)
        elif buffer == "accumulation":
            image = alpha.clamp(0, 1)[..., None].expand(-1, -1, 3)
        else:
            raise ValueError(f"buffer {buffer!r} is not offered by this Gaussian source ({self.buffers})")
        raw = {"rgb": color, "splats": color, "features": color, "depth": depth, "accumulation": alpha}[buffer]
        return Frame(image.float(), torch.where(solid, depth, torch.zeros_like(depth)), legend, raw)


def splat_arrays(scene: GaussianScene) -> dict[str, np.ndarray]:
    """What viser's native splat renderer takes: centers [N,3], covariances R S^2 R^T [N,3,3],
    base colours [N,3] (SH degree 0; grey for feature scenes), opacities [N,1]."""
    with torch.no_grad():
        w, x, y, z = scene.quats.unbind(-1)
        rot = torch.stack([
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)
        m = rot * scene.scales[:, None, :]
        covariances = m @ m.transpose(1, 2)
        if scene.is_feature_scene:
            rgbs = torch.full((len(scene), 3), 0.6)
        else:
            rgbs = sh_to_rgb(scene.params["sh0"][:, 0]).clamp(0, 1)
        return {"centers": scene.means.float().cpu().numpy(), "covariances": covariances.float().cpu().numpy(),
                "rgbs": rgbs.float().cpu().numpy(), "opacities": scene.opacities.reshape(-1, 1).float().cpu().numpy()}


class SplatPanel:
    """viser's own splat renderer under `root`, shown while the buffer is "splats"; the Gaussians are sent
    to the browser the first time (a browser holding a large hidden splat scene slows down)."""

    def __init__(self, server, scene: GaussianScene, root: str = ""):
        self.server, self.scene, self.root = server, scene, root
        self.handle = None
        with server.gui.add_folder("Splats"):
            server.gui.add_markdown(f"{len(scene):,} Gaussians; buffer **splats**: drawn by your browser")

    def show_buffer(self, buffer: str) -> None:
        if buffer == "splats" and self.handle is None:
            self.handle = self.server.scene.add_gaussian_splats(f"{self.root}/splats", **splat_arrays(self.scene))
        if self.handle is not None:
            self.handle.visible = buffer == "splats"

    def close(self) -> None:
        """Nothing runs in the background."""


def open_gaussians_ply(path: Path) -> ViewerContent:
    """A 3DGS PLY file: home camera outside its bounds, looking at their centre."""
    scene = read_ply(path)
    if len(scene) == 0:
        raise DataError(path, "element vertex", "holds no Gaussians: nothing to show")
    source = GaussianSource(scene)
    home, center = home_outside_box(*source.aabb)
    return ViewerContent(f"Gaussians {path.name}", source, home=home, center=center)


def load_scene_checkpoint(path: Path) -> GaussianScene | None:
    """The Gaussian scene of a training checkpoint (its "scene" group), None when it has none."""
    state, _ = load_checkpoint(path)
    if "scene" not in state:
        return None
    try:
        return GaussianScene(**state["scene"]).detached()
    except (TypeError, ValueError) as err:
        raise CheckpointError(path, "scene", f"not a Gaussian scene ({err})") from None


def source_from_run(run_dir: Path) -> GaussianSource | None:
    """A `scene3d.gaussians.train` run: its newest checkpoint that loads, followed while the run writes
    newer ones, else its final `scene.ply` (a score-distillation run's `splats.ply`); None for other runs.
    A run that has written its final scene.ply is finished: the browser draws it by default."""
    found = newest_loadable(run_dir, load_scene_checkpoint)
    if found is not None and found[1] is not None:
        follower = CheckpointFollower(found[0], load_scene_checkpoint)
        finished = any((run_dir / name).is_file() for name in RUN_PLY_NAMES)
        return GaussianSource(follower.value, follower=follower, browser_first=finished)
    for name in RUN_PLY_NAMES:
        if (run_dir / name).is_file():
            return GaussianSource(read_ply(run_dir / name))
    return None
