"""GUI folder "Glimpses": step an active-vision rollout forward and back on a chosen scene, or
place the next glimpse by hand, and watch the canvas (PCA) and the heads' predicted teacher features (PCA)
approach the teacher (PCA). Opens a trained-here run (`glimpse_panel_for_run`) or a published checkpoint
(`glimpse_panel_for_checkpoint`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from avfm.data import precompute_targets, read_square_image
from avfm.evaluate import load_run
from avfm.pretrained import load_pretrained, pretrained_config
from scene3d.cameras import Cameras, look_at
from scene3d.errors import DataError
from scene3d.viz import image_grid
from viewer.glimpse import VIEWER_POLICIES, GlimpseSession

# The scene image stands in the world's x-z plane (z up), facing a camera on the -y axis; viser
# draws an image's first row at the bottom of its plane, so rows are flipped when sent.
_IMAGE_WXYZ = (np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0)  # +90 degrees about x


def image_point(origin, direction) -> tuple[float, float] | None:
    """Where a click ray meets the scene image (the square |x|, |z| <= 1 of the plane y = 0), as
    avfm scene coordinates (y down, x right, both in [-1, 1]); None when it misses."""
    o, d = np.asarray(origin, float), np.asarray(direction, float)
    if abs(d[1]) < 1e-9:
        return None
    p = o - o[1] / d[1] * d
    if max(abs(p[0]), abs(p[2])) > 1:
        return None
    return float(-p[2]), float(p[0])


def _u8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


PHOTO_NOTE = ("_This is one of your photographs. A model trained here saw only procedural synthetic scenes, so a "
              "photograph is out of its distribution: expect a prediction error many times the one on the "
              "held-out synthetic scenes (the Scene slider's later entries), and a canvas that says more about "
              "the model than about the photo._")


class GlimpsePanel:
    """`images` [N,3,H,W] in [0,1]; `teacher` gives the target embeddings (None: no error / teacher PCA)."""

    def __init__(self, server, model, images: torch.Tensor, teacher=None, max_steps: int = 16, size: int = 160,
                 root: str = "", n_photos: int = 0):
        self.server, self.model, self.images, self.teacher, self.size = server, model, images, teacher, size
        self.max_steps, self.n_photos = max_steps, n_photos
        self._lock = threading.Lock()
        gui = server.gui
        with gui.add_folder("Glimpses"):
            self.status = gui.add_markdown("")
            self.photo_note = gui.add_markdown(PHOTO_NOTE, visible=False)
            self.pictures = gui.add_image(np.zeros((2 * size, 3 * size, 3), np.uint8),
                                          label="scene + glimpses | last glimpse / canvas PCA | predicted teacher "
                                                "PCA | teacher PCA")
            self.step_button = gui.add_button("Step")
            self.back_button = gui.add_button("Back")
            self.scene_index = gui.add_slider("Scene", min=0, max=max(len(images) - 1, 1), step=1, initial_value=0,
                                              disabled=len(images) < 2)
            self.policy = gui.add_dropdown("Policy", VIEWER_POLICIES, initial_value="c2f")
            self.y = gui.add_slider("Next y", min=-1.0, max=1.0, step=0.01, initial_value=0.0)
            self.x = gui.add_slider("Next x", min=-1.0, max=1.0, step=0.01, initial_value=0.0)
            self.zoom = gui.add_slider("Next zoom (half-side)", min=0.05, max=1.0, step=0.01, initial_value=0.5)
            self.place_button = gui.add_button("Place glimpse")
        self.scene_node = server.scene.add_image(f"{root}/glimpses/scene", np.zeros((size, size, 3), np.uint8),
                                                 2.0, 2.0, wxyz=_IMAGE_WXYZ, position=(0.0, 0.0, 0.0),
                                                 cast_shadow=False, receive_shadow=False)
        self.scene_node.on_click(lambda event: self.click(event.ray_origin, event.ray_direction))
        self.scene_index.on_update(lambda _: self.load_scene(int(self.scene_index.value)))
        self.policy.on_update(lambda _: self._do(lambda: self.session.reset(str(self.policy.value))))
        self.step_button.on_click(lambda _: self._do(self.session.step))
        self.back_button.on_click(lambda _: self._do(self.session.back))
        self.place_button.on_click(lambda _: self._do(
            lambda: self.session.place(float(self.y.value), float(self.x.value), float(self.zoom.value))))
        self.load_scene(0)

    def load_scene(self, index: int) -> None:
        image = self.images[index]
        self.photo_note.visible = index < self.n_photos
        targets = None
        if self.teacher is not None:
            with torch.no_grad():
                targets = precompute_targets(self.teacher, image[None], self.model.cfg.canvas_grid)[0][0]
        with self._lock:
            self.session = GlimpseSession(self.model, image, targets, str(self.policy.value), self.max_steps)
        self.refresh()

    def click(self, origin, direction) -> None:
        """A click on the scene image: the next glimpse goes there, at the zoom slider's size."""
        if (point := image_point(origin, direction)) is not None:
            self.y.value, self.x.value = round(point[0], 2), round(point[1], 2)
            self._do(lambda: self.session.place(point[0], point[1], float(self.zoom.value)))

    def _do(self, action) -> None:
        with self._lock:
            action()
        self.refresh()

    def refresh(self) -> None:
        """Redraw every picture and the per-step errors from the session."""
        with self._lock:
            s, size = self.session, self.size
            scene = torch.nn.functional.interpolate(s.scene_with_boxes().permute(2, 0, 1)[None], size=(size, size),
                                                    mode="nearest")[0].permute(1, 2, 0)
            blank = torch.zeros(size, size, 3)
            teacher, prediction = s.teacher_pca(size), s.prediction_pca(size)
            self.scene_node.image = np.ascontiguousarray(np.flipud(_u8(scene)))
            self.pictures.image = _u8(image_grid([[scene, s.last_glimpse(size), blank],
                                                  [s.canvas_pca(size), blank if prediction is None else prediction,
                                                   blank if teacher is None else teacher]]))
            errors = ", ".join(f"{st.error:.3f}" for st in s.steps if st.error is not None)
            self.status.content = (f"policy **{s.policy}**, step {len(s.steps)}"
                                   + (f"; prediction error per step: {errors}" if errors else ""))

    def close(self) -> None:
        """Nothing runs in the background."""


def glimpse_panel_for_run(run_dir: Path, images: Sequence[Path] = (), n_scenes: int = 32
                          ) -> Callable[[object, str], GlimpsePanel]:
    """A panel factory for an avfm run: its latest checkpoint and teacher, on the image files given
    (centre-cropped square at the run's scene resolution) followed by its held-out scenes."""
    model, _, teacher, _, val_set = load_run(run_dir)
    resolution = val_set.images.shape[-1]
    scenes = val_set.images[:n_scenes]
    if images:
        scenes = torch.cat([torch.stack([read_square_image(p, resolution) for p in images]).clamp(0, 1), scenes])
    return lambda server, root: GlimpsePanel(server, model, scenes, teacher, root=root, n_photos=len(images))


def glimpse_panel_for_checkpoint(folder: Path, images: Sequence[Path]) -> Callable[[object, str], GlimpsePanel]:
    """A panel factory for a published CanViT checkpoint (`avfm.load_pretrained`) on the image files given
    (centre-cropped square at the checkpoint's scene resolution); no teacher, so no error or teacher PCA."""
    if not images:
        raise DataError(folder, None, "a checkpoint needs images for its Glimpses panel (scripts/view.py IMAGE "
                        f"--canvit {folder})")
    model = load_pretrained(folder)
    resolution = pretrained_config(folder).scene_px
    scenes = torch.stack([read_square_image(p, resolution) for p in images]).clamp(0, 1)
    return lambda server, root: GlimpsePanel(server, model, scenes, root=root)


def glimpse_home() -> tuple[Cameras, tuple[float, float, float]]:
    """A camera on the -y axis facing the scene image, and the point it orbits (the image centre)."""
    eye = torch.tensor([[0.0, -4.5, 0.0]])
    return Cameras.from_fov(look_at(eye, torch.zeros(3)), np.radians(50.0), 640, 480), (0.0, 0.0, 0.0)
