"""Declared ranges of numeric settings, checked in one place.

Every config dataclass a command reads declares the range of each of its numeric fields in a
``RANGES`` class attribute (merged along the class's bases), written as the interval a reader
would write: ``"> 0"``, ``">= 1"``, ``"[0, 1]"``, ``"(0, 1)"``, ``"any"`` (any finite number).
:func:`check_ranges` runs on every config built from flags, a ``--config`` file or a run's
``config.yaml`` (their ``__post_init__`` calls it), so ``--lr nan`` / ``--lr -1`` / ``lr: inf`` end
in one line naming the flag before anything starts. NaN and infinity are never in a range; ``None``
(where the type allows it: "from the preset") always is. tests/test_ranges.py checks that no
numeric field of any command lacks a range.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from functools import cache
from typing import Any

from dpft.base_policies.infra.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Range:
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    text: str = "any"

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return math.isfinite(x) and above and below


@cache
def parse_range(spec: str) -> Range:
    """``"> 0"`` / ``">= 1"`` / ``"<= 0"`` / ``"[0, 1)"`` / ``"any"`` -> :class:`Range`."""
    s = spec.strip()
    if s == "any":
        return Range(text=s)
    for op, kw in ((">=", {}), (">", {"low_open": True}), ("<=", {}), ("<", {"high_open": True})):
        if s.startswith(op):
            value = float(s[len(op) :])
            bound = {"low": value} if op[0] == ">" else {"high": value}
            return Range(**bound, **kw, text=s)
    if s[0] in "[(" and s[-1] in "])" and "," in s:
        low, high = (float(v) for v in s[1:-1].split(","))
        return Range(low, high, s[0] == "(", s[-1] == ")", s)
    raise ValueError(f"range {spec!r}: write '> 0', '>= 1', '[0, 1]', '(0, 1)' or 'any'")


def declared_ranges(cls: type) -> dict[str, str]:
    """``RANGES`` of ``cls`` and its bases (a subclass's entry wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(vars(klass).get("RANGES", {}))
    return out


def numeric_fields(cls: type) -> list[str]:
    """The fields of dataclass ``cls`` whose type is int or float (optionally ``| None``), or a list of them."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        args = set(typing.get_args(hints[f.name])) - {type(None)} or {hints[f.name]}
        if args and args <= {int, float} and hints[f.name] is not bool:
            out.append(f.name)
    return out


def flag(name: str, prefix: str = "") -> str:
    return "--" + (prefix + name).replace("_", "-")


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Raise one :class:`ConfigError` for the first numeric setting of ``cfg`` outside its range
    (nested config dataclasses are checked with their dotted flag names)."""
    ranges = declared_ranges(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, f"{prefix}{f.name}.")
            continue
        if f.name not in ranges or value is None or isinstance(value, bool):
            continue
        r = parse_range(ranges[f.name])
        for item in value if isinstance(value, (list, tuple)) else [value]:  # a list: each of its numbers
            if not isinstance(item, (int, float)) or isinstance(item, bool):
                raise ConfigError(f"{flag(f.name, prefix)} must be a number, got {item!r}")
            if item not in r:
                raise ConfigError(f"{flag(f.name, prefix)} must be {describe(r)}, got {item!r}")


def describe(r: Range) -> str:
    if r.text == "any":
        return "a finite number"
    if r.text[0] in "<>":
        return r.text
    return f"in {r.text}"
