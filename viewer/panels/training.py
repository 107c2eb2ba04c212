"""Live curves from a run directory that may still be training.

`ScalarLog` tails `scalars.jsonl` (written by `scene3d.runs.RunDir.log_scalars`, one JSON object
`{"step", "time", <name>: value, ...}` per line): each poll parses only the complete lines added
since the last one, so a half-written last line is read on the next poll. A run resumed from an
earlier checkpoint logs steps again; the older points from that step on are replaced.
`TrainingPanel` polls it in a background thread and draws one uPlot chart per scalar.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np

_NOT_SCALARS = ("step", "time")


class ScalarLog:
    """Incremental reader of one scalars.jsonl; `series[name] = (steps, values)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._reset()

    def _reset(self) -> None:
        self.series: dict[str, tuple[list[int], list[float]]] = {}
        self.bad_lines = 0  # lines that are not a JSON object with an integer "step"
        self.skipped_values = 0  # non-numeric or non-finite values
        self.records = 0
        self._offset = 0
        self._partial = b""

    def poll(self) -> int:
        """Read what was appended since the last poll; returns the number of new records."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        if size < self._offset:  # replaced or truncated: start over
            self._reset()
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        new = 0
        for line in lines:
            if line.strip():
                new += self._add(line)
        self.records += new
        return new

    def _add(self, line: bytes) -> int:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            self.bad_lines += 1
            return 0
        step = record["step"]
        for name, value in record.items():
            if name in _NOT_SCALARS:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                self.skipped_values += 1
                continue
            steps, values = self.series.setdefault(name, ([], []))
            while steps and steps[-1] >= step:  # resumed run: it rewrites history from `step` on
                steps.pop()
                values.pop()
            steps.append(step)
            values.append(float(value))
        return 1

    @property
    def last_step(self) -> int | None:
        return max((s[-1] for s, _ in self.series.values() if s), default=None)

    def arrays(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        steps, values = self.series[name]
        return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def metrics_markdown(path: Path) -> str | None:
    """A run's metrics.json as a two-column markdown table (numbers and strings only)."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict):
        return None
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in metrics.items() if isinstance(v, int | float | str)]
    return "\n".join(["| metric | value |", "| --- | --- |", *rows]) if rows else None


class TrainingPanel:
    """GUI folder "Training" (folded unless `expanded`): status line, metrics table, one chart per scalar,
    refreshed every `poll_s`."""

    def __init__(self, server, run_dir: str | Path, poll_s: float = 1.0, expanded: bool = True):
        self.server, self.run_dir = server, Path(run_dir)
        self.log = ScalarLog(self.run_dir / "scalars.jsonl")
        self.poll_s = poll_s
        self.charts: dict[str, object] = {}
        self._metrics_mtime: float | None = None
        with server.gui.add_folder("Training", expand_by_default=expanded) as self.folder:
            self.status = server.gui.add_markdown(f"run `{self.run_dir}`: waiting for scalars.jsonl")
            self.metrics = server.gui.add_markdown("", visible=False)
        self._stop = threading.Event()
        self.update()
        self._thread = threading.Thread(target=self._loop, name="viewer-training", daemon=True)
        self._thread.start()

    def update(self) -> int:
        """One poll: new records into the charts, status and metrics refreshed. Returns new records."""
        new = self.log.poll()
        if new:
            for name in self.log.series:
                self._chart(name)
            self.status.content = (f"run `{self.run_dir.name}`: step {self.log.last_step}, "
                                   f"{self.log.records} records" + (f", {self.log.bad_lines} unreadable lines"
                                                                    if self.log.bad_lines else ""))
        self._refresh_metrics()
        return new

    def _chart(self, name: str) -> None:
        data = self.log.arrays(name)
        if name in self.charts:
            self.charts[name].data = data
            return
        with self.folder:
            self.charts[name] = self.server.gui.add_uplot(
                data, ({"label": "step"}, {"label": name, "stroke": "#1f77b4", "width": 2}),
                title=name, scales={"x": {"time": False, "auto": True}, "y": {"auto": True}}, aspect=1.6)

    def _refresh_metrics(self) -> None:
        path = self.run_dir / "metrics.json"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime != self._metrics_mtime and (table := metrics_markdown(path)) is not None:
            self._metrics_mtime = mtime
            self.metrics.content, self.metrics.visible = table, True

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.update()
            except Exception as err:  # keep polling: the file may be mid-rewrite
                self.status.content = f"reading scalars failed: {type(err).__name__}: {err}"

    def close(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(5.0)
