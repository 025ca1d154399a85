"""Typed dataclass records <-> plain dicts (JSON/YAML), checked the way the command line checks
flags: unknown keys, and values of the wrong type, end in one :class:`ConfigError` naming the key.
Used for every config file, run record and policy ``config.json``."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

from dpft.base_policies.infra.errors import ConfigError


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain JSON/YAML-friendly dict (tuples become lists, paths strings)."""
    out = dataclasses.asdict(cfg)

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if hasattr(v, "__fspath__"):
            return str(v)
        return v

    return clean(out)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and values of the wrong
    type (as the command line would) with a clear message."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping for {cls.__name__}, got {type(data).__name__}")
    data = moved_into_groups(cls, data)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} setting(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        hint = hints[name]
        if not _matches(value, hint):
            # a config file is checked like a flag: `steps: 10.5` or `steps: ten` is an error, not a run
            raise ConfigError(f"{cls.__name__} setting {name!r} must be {_describe(hint)}, got {value!r}")
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif isinstance(value, list):  # a tuple setting (YAML has only lists), unless the setting is a list
            is_list = list in (typing.get_origin(hint), *(typing.get_origin(a) for a in typing.get_args(hint)))
            value = value if is_list else tuple(value)
        elif isinstance(value, str) and Path in (hint, *typing.get_args(hint)):
            value = Path(value)
        kwargs[name] = value
    return cls(**kwargs)


def moved_into_groups(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the flat keys that ``cls.MOVED`` maps to a group (``{"epochs": "ppo.epochs"}``)
    moved there, so a config file or a run's config.yaml written before the group existed still
    reads. A key given both ways keeps the grouped value."""
    moved = getattr(cls, "MOVED", {})
    if not any(k in moved for k in data):
        return data
    out = {k: v for k, v in data.items() if k not in moved}
    for old, new in moved.items():
        if old not in data:
            continue
        group, _, name = new.partition(".")
        given = out.get(group) or {}
        if isinstance(given, dict):  # anything else is left for the type check to name
            out[group] = {name: data[old], **given}
    return out


def check_record(cls: type, data: Any, prefix: str = "") -> None:
    """Check a complete stored record of dataclass ``cls`` (a policy's ``config.json``): every
    field present (except the class's ``added_later`` keys) and of its declared type.

    :func:`from_dict` alone would fill a missing key with today's default and pass ``"8"`` on
    as a horizon; a stored record must not be silently reinterpreted, so this raises one
    :class:`ConfigError` naming the key (``arch.pred_horizon``) and the expected type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__} must be a JSON object, got {_json_type(data)}")
    hints = typing.get_type_hints(cls)
    optional = getattr(cls, "added_later", frozenset())
    for f in dataclasses.fields(cls):
        key, hint = prefix + f.name, hints[f.name]
        if f.name not in data:
            if f.name in optional:
                continue
            raise ConfigError(f"required key {key!r} ({_describe(hint)}) is missing")
        value = data[f.name]
        if dataclasses.is_dataclass(hint):
            check_record(hint, value, key + ".")
        elif not _matches(value, hint):
            raise ConfigError(f"key {key!r} must be {_describe(hint)}, got {value!r} ({_json_type(value)})")


def _union_args(hint: Any) -> tuple[Any, ...] | None:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else None


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field type (only the types dataclass configs here use)."""
    if (args := _union_args(hint)) is not None:
        return any(_matches(value, a) for a in args)
    origin = typing.get_origin(hint)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(hint))
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is Path:
        return isinstance(value, (str, Path))
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (dict, hint))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: leave it to the constructor


def _describe(hint: Any, plural: bool = False) -> str:
    """``int | None`` -> "an integer or null"; ``tuple[float, ...]`` -> "a list of numbers"."""
    if (args := _union_args(hint)) is not None:
        return " or ".join(_describe(a, plural) for a in args)
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is tuple:
        return "a list of " + _describe(typing.get_args(hint)[0], plural=True)
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    names |= {Path: "a path (a string)", dict: "a mapping"}
    many = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
    return (many if plural else names).get(hint, getattr(hint, "__name__", str(hint)))


def _json_type(value: Any) -> str:
    names = {type(None): "null", bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return {**names, list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
