"""Time, measured one way everywhere: wall-clock and process-CPU seconds side by side (on a shared
machine the CPU seconds are the steadier number).

- `Stopwatch`: the seconds of a training run, with evaluation and checkpointing paused out; it
  starts from given seconds, so a resumed run keeps counting where the killed one stopped.
- `time_calls`: the minimum or median seconds of repeated calls, for benchmarks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Timing:
    wall_s: float
    cpu_s: float

    def as_dict(self) -> dict[str, float]:
        return {"wall_s": self.wall_s, "cpu_s": self.cpu_s}


class Stopwatch:
    """Wall and process-CPU seconds since it started (plus `wall`/`cpu` carried over), minus the time
    spent inside `paused()`."""

    def __init__(self, wall: float = 0.0, cpu: float = 0.0):
        self._wall0, self._cpu0 = time.perf_counter() - wall, time.process_time() - cpu

    def read(self) -> Timing:
        return Timing(time.perf_counter() - self._wall0, time.process_time() - self._cpu0)

    @contextmanager
    def paused(self) -> Iterator[Timing]:
        """Stop counting inside the block; yields the reading at its start."""
        now = self.read()
        yield now
        self._wall0, self._cpu0 = time.perf_counter() - now.wall_s, time.process_time() - now.cpu_s


def time_calls(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1,
               stat: Literal["min", "median"] = "min") -> tuple[Timing, Any]:
    """`stat` of the wall and the CPU seconds of `repeats` calls of `fn` after `warmup` untimed calls,
    and the last call's result. The minimum is the least disturbed by other processes; the median
    is the typical call."""
    for _ in range(warmup):
        fn()
    walls, cpus, value = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    reduce = min if stat == "min" else statistics.median
    return Timing(reduce(walls), reduce(cpus)), value
