"""What the progressive scheme buys: time and bytes of a preview frame versus a full frame
(render + JPEG encode), measured side by side on one view of a synthetic world."""

from __future__ import annotations

import dataclasses
import io
import statistics
import time
from dataclasses import dataclass, field
from typing import Annotated

import imageio.v3 as iio

from scene3d.config import Range, check
from scene3d.data.synthetic import make_world
from viewer.camera import cameras_to_view
from viewer.inputs import open_synthetic
from viewer.panels.scene import RenderSettings
from viewer.sources import SyntheticSource, render_view


@dataclass
class BenchConfig:
    seed: int = 0
    aspect: Annotated[float, Range(0.01, 100)] = 16 / 9  # a typical browser canvas
    repeats: Annotated[int, Range(1)] = 3
    settings: RenderSettings = field(default_factory=RenderSettings)

    def __post_init__(self) -> None:
        check(self)


def _jpeg_bytes(image, quality: int) -> int:
    buffer = io.BytesIO()
    iio.imwrite(buffer, image, extension=".jpeg", quality=quality)
    return buffer.tell()


def _measure(source, view, side: int, quality: int, repeats: int) -> dict:
    seconds, size = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        frame = render_view(source, view, "rgb", side)
        size = _jpeg_bytes(frame.to_uint8(), quality)
        seconds.append(time.perf_counter() - start)
    h, w = frame.image.shape[:2]
    return {"width": w, "height": h, "jpeg_quality": quality, "seconds": statistics.median(seconds), "bytes": size}


def run_bench(config: BenchConfig) -> dict:
    home = open_synthetic(f"synthetic:{config.seed}").home
    view = cameras_to_view(home)
    view = dataclasses.replace(view, aspect=config.aspect)
    source = SyntheticSource(make_world(config.seed))
    s = config.settings
    full = _measure(source, view, s.max_side, s.full_jpeg, config.repeats)
    preview = _measure(source, view, max(16, round(s.max_side * s.preview_scale)), s.preview_jpeg, config.repeats)
    return {"full": full, "preview": preview,
            "full_over_preview_seconds": full["seconds"] / preview["seconds"],
            "full_over_preview_bytes": full["bytes"] / preview["bytes"]}
