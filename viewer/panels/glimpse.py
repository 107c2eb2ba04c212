"""GUI folder "Glimpses": step an active-vision rollout forward and back on a chosen scene, or
place the next glimpse by hand, and watch the canvas (PCA) approach the teacher (PCA)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from avfm.data import precompute_targets
from avfm.evaluate import load_run
from scene3d.viz import image_grid
from viewer.glimpse import VIEWER_POLICIES, GlimpseSession


def _u8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


class GlimpsePanel:
    """`images` [N,3,H,W] in [0,1]; `teacher` gives the target embeddings (None: no error / teacher PCA)."""

    def __init__(self, server, model, images: torch.Tensor, teacher=None, max_steps: int = 16, size: int = 160):
        self.server, self.model, self.images, self.teacher, self.size = server, model, images, teacher, size
        self.max_steps = max_steps
        self._lock = threading.Lock()
        gui = server.gui
        with gui.add_folder("Glimpses"):
            self.status = gui.add_markdown("")
            self.pictures = gui.add_image(np.zeros((2 * size, 2 * size, 3), np.uint8),
                                          label="scene + glimpses | last glimpse / canvas PCA | teacher PCA")
            self.step_button = gui.add_button("Step")
            self.back_button = gui.add_button("Back")
            self.scene_index = gui.add_slider("Scene", min=0, max=max(len(images) - 1, 1), step=1, initial_value=0,
                                              disabled=len(images) < 2)
            self.policy = gui.add_dropdown("Policy", VIEWER_POLICIES, initial_value="c2f")
            self.y = gui.add_slider("Next y", min=-1.0, max=1.0, step=0.01, initial_value=0.0)
            self.x = gui.add_slider("Next x", min=-1.0, max=1.0, step=0.01, initial_value=0.0)
            self.zoom = gui.add_slider("Next zoom (half-side)", min=0.05, max=1.0, step=0.01, initial_value=0.5)
            self.place_button = gui.add_button("Place glimpse")
        self.scene_index.on_update(lambda _: self.load_scene(int(self.scene_index.value)))
        self.policy.on_update(lambda _: self._do(lambda: self.session.reset(str(self.policy.value))))
        self.step_button.on_click(lambda _: self._do(self.session.step))
        self.back_button.on_click(lambda _: self._do(self.session.back))
        self.place_button.on_click(lambda _: self._do(
            lambda: self.session.place(float(self.y.value), float(self.x.value), float(self.zoom.value))))
        self.load_scene(0)

    def load_scene(self, index: int) -> None:
        image = self.images[index]
        targets = None
        if self.teacher is not None:
            with torch.no_grad():
                targets = precompute_targets(self.teacher, image[None], self.model.cfg.canvas_grid)[0][0]
        with self._lock:
            self.session = GlimpseSession(self.model, image, targets, str(self.policy.value), self.max_steps)
        self.refresh()

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
            teacher = s.teacher_pca(size)
            teacher = torch.zeros(size, size, 3) if teacher is None else teacher
            self.pictures.image = _u8(image_grid([[scene, s.last_glimpse(size)], [s.canvas_pca(size), teacher]]))
            errors = ", ".join(f"{st.error:.3f}" for st in s.steps if st.error is not None)
            self.status.content = (f"policy **{s.policy}**, step {len(s.steps)}"
                                   + (f"; prediction error per step: {errors}" if errors else ""))

    def close(self) -> None:
        """Nothing runs in the background."""


def glimpse_panel_for_run(run_dir: Path, n_scenes: int = 32) -> Callable[[object], GlimpsePanel]:
    """A panel factory for an avfm run: its latest checkpoint, its teacher, its held-out scenes."""
    model, _, teacher, _, val_set = load_run(run_dir)
    return lambda server: GlimpsePanel(server, model, val_set.images[:n_scenes], teacher)
