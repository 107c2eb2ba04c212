"""GUI panels of the viewer, one class per panel; each owns its threads and stops them in `close()`."""

from viewer.panels.frustums import CameraFrustums
from viewer.panels.scene import ProgressiveRenderer, RenderSettings, ScenePanel
from viewer.panels.training import ScalarLog, TrainingPanel

__all__ = ["CameraFrustums", "ProgressiveRenderer", "RenderSettings", "ScalarLog", "ScenePanel", "TrainingPanel"]
