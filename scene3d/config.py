"""Configs checked before anything runs: ranges and choices are declared beside each field and
`check(config)` enforces them, called from the `__post_init__` of every script's config (so tyro's
parsing already fails, and `scene3d.cli.run_cli` prints one line and exits with code 2).

    @dataclass
    class FitConfig:
        steps: Annotated[int, Range(1)] = 2000                       # at least 1
        lr: Annotated[float, Range(0, above=True)] = 1e-3            # above 0 (and finite)
        field: Annotated[str, Choice(FIELDS)] = "hashgrid"           # a registry's names
        mode: Literal["a", "b"] = "a"                                # Literal values are checked too

        def __post_init__(self) -> None:
            check(self)

Nested configs are walked; `Range` and `Choice` apply to every element of a tuple, `Ordered` to
the tuple (a `(low, high)` pair); None (an unset optional) passes. The error names the
command-line flag: `--batch-rays: must be at least 1, got 0`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import tyro

from scene3d.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """`lo <= value <= hi` (either bound may be None); `above`: `lo < value`. Floats must be finite."""

    lo: float | None = None
    hi: float | None = None
    above: bool = False

    def problem(self, value: Any) -> str | None:
        if isinstance(value, tuple | list):
            return next((p for item in value if (p := self.problem(item)) is not None), None)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if self.lo is not None and (value <= self.lo if self.above else value < self.lo):
            return f"must be {'above' if self.above else 'at least'} {self.lo:g}, got {value:g}"
        if self.hi is not None and value > self.hi:
            return f"must be at most {self.hi:g}, got {value:g}"
        return None


@dataclass(frozen=True, eq=False)
class Choice:
    """One of `values` (a registry dict means its keys, read when checked)."""

    values: Iterable[Any]

    def problem(self, value: Any) -> str | None:
        allowed = list(self.values)
        bad = [v for v in (value if isinstance(value, tuple | list) else (value,)) if v not in allowed]
        return f"must be one of {', '.join(map(str, allowed))}; got {bad[0]!r}" if bad else None


@dataclass(frozen=True)
class Ordered:
    """A tuple whose values do not decrease (a `(low, high)` range)."""

    def problem(self, value: Any) -> str | None:
        pairs = list(zip(value, value[1:], strict=False))
        return None if all(a <= b for a, b in pairs) else f"values must not decrease, got {tuple(value)}"


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _literal_values(hint: Any) -> list[Any] | None:
    """The values a `Literal[...]` (or `Literal[...] | None`) annotation allows, else None."""
    base = hint.__origin__ if typing.get_origin(hint) is typing.Annotated else hint
    if typing.get_origin(base) is Literal:
        return list(typing.get_args(base))
    members = [a for a in typing.get_args(base) if typing.get_origin(a) is Literal]
    return [v for m in members for v in typing.get_args(m)] + [None] if members else None


def check(config: Any, prefix: str = "") -> None:
    """Raise `ConfigError` naming the flag of the first field of `config` (a dataclass, walked with
    its nested dataclasses) that breaks its `Range` / `Choice` / `Literal`."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints.get(f.name)
        rules = getattr(hint, "__metadata__", ())
        if dataclasses.is_dataclass(value):
            flat = any(rule is tyro.conf.OmitArgPrefixes for rule in rules)
            check(value, prefix if flat else f"{prefix}{f.name}.")
            continue
        if value is None:
            continue
        flag = "--" + f"{prefix}{f.name}".replace("_", "-")
        allowed = _literal_values(hint)
        if allowed is not None and value not in allowed:
            raise ConfigError(flag, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")
        for rule in rules:
            if isinstance(rule, Range | Choice | Ordered) and (problem := rule.problem(value)) is not None:
                raise ConfigError(flag, problem)
