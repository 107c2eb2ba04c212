"""The project's error types. Every reader raises these with the file and the field at fault."""

from __future__ import annotations

from pathlib import Path


class Scene3DError(Exception):
    """Base class for errors the project raises on purpose (bad input, bad configuration)."""


def one_line(text: object, limit: int = 2000) -> str:
    """`text` on one line (newlines and runs of spaces collapsed), cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class DataError(Scene3DError, ValueError):
    """Bad input data: `DataError(path, field, problem)` reads as one line `path: field: problem`."""

    def __init__(self, path: str | Path | None, field: str | None, problem: str):
        self.path = None if path is None else str(path)
        self.field = field
        self.problem = one_line(problem)
        parts = [p for p in (self.path, field) if p]
        super().__init__(one_line(": ".join([*parts, self.problem])))


class CheckpointError(DataError):
    """A checkpoint that is missing, truncated, corrupt or does not fit the model."""


class OutputError(DataError, OSError):
    """An output that cannot be written (disk full, file-size limit, folder not writable)."""


class MissingSplitError(DataError):
    """A dataset without the split asked for (no `transforms_test.json`, no `test_filenames`)."""


class ConfigError(Scene3DError):
    """A configuration value out of its range or choices (`scene3d.config.check`): `--flag: problem`."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, one_line(problem)
        super().__init__(f"{field}: {self.problem}")


class NonFiniteError(Scene3DError):
    """A training step produced NaN or infinity in a loss or a parameter (`scene3d.guard`)."""

    def __init__(self, step: int, name: str, kind: str = "tensor", checkpoint: str | Path | None = None):
        self.step, self.name, self.checkpoint = step, name, None if checkpoint is None else str(checkpoint)
        kept = f"; last good checkpoint kept: {checkpoint}" if checkpoint else "; no good checkpoint on disk"
        super().__init__(f"step {step}: {kind} '{name}' is NaN or infinite, training stopped{kept} "
                         "(the 'nonfinite' option set to 'skip' skips such steps)")
