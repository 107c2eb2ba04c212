"""The project's error types. Every reader raises these with the file and the field at fault."""

from __future__ import annotations

from pathlib import Path


class Scene3DError(Exception):
    """Base class for errors the project raises on purpose (bad input, bad configuration)."""


class DataError(Scene3DError, ValueError):
    """Bad input data: `DataError(path, field, problem)` reads as one line `path: field: problem`."""

    def __init__(self, path: str | Path | None, field: str | None, problem: str):
        self.path = None if path is None else str(path)
        self.field = field
        self.problem = problem
        parts = [p for p in (self.path, field) if p]
        super().__init__(": ".join([*parts, problem]))


class CheckpointError(DataError):
    """A checkpoint that is missing, truncated, corrupt or does not fit the model."""
