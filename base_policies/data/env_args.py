"""What a demonstration file says about its environment: the ``env_args`` JSON attribute.

Two layouts are read, and a file may mix them:

* dpft's own (``dpft collect``): ``{"task": "metaworld:push-v3", "action_low": [...],
  "action_high": [...], ...}``;
* robomimic's: ``{"env_name": "Lift", "type": 1, "env_kwargs": {...}}``.

Only top-level keys are read. The task comes from ``task`` and nothing else: robomimic's
``env_name`` names a robosuite environment, not a dpft task id, so a file without ``task``
leaves the task to ``--task`` rather than guessing one. ``obs_keys`` (optional) is the order in
which the keys of an ``obs`` group are concatenated -- the order the environment emits them;
without it a group of several keys needs ``--obs-keys``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dpft.base_policies.infra.errors import DatasetError


@dataclass(frozen=True)
class EnvInfo:
    """The parts of ``env_args`` that training uses, validated."""

    task: str | None = None
    """dpft task id the demos were recorded on (None: not recorded)."""
    action_low: tuple[float, ...] | None = None
    """Lower action bound in environment units (None: not recorded, actions are not clipped)."""
    action_high: tuple[float, ...] | None = None
    """Upper action bound in environment units."""
    obs_keys: tuple[str, ...] | None = None
    """Order of the keys of an ``obs`` group (None: not recorded)."""
    env_name: str | None = None
    """robomimic's environment name (informational; never taken as the task)."""


def read_env_info(env_args: Any, source: str, action_dim: int | None = None) -> EnvInfo:
    """Validate ``env_args`` (``None`` when the file has none); ``action_dim``, when given, is
    checked against the length of the bounds. Raises :class:`DatasetError` naming ``source``."""
    if env_args is None:
        return EnvInfo()
    if not isinstance(env_args, dict):
        raise DatasetError(f"{source}: attribute env_args must be a JSON object, got {type(env_args).__name__}")

    def bad(key: str, expected: str) -> DatasetError:
        return DatasetError(f"{source}: env_args[{key!r}] must be {expected}, got {env_args[key]!r}")

    task = env_args.get("task")
    if task is not None and not isinstance(task, str):
        raise bad("task", "a task id string")
    bounds = {}
    for key in ("action_low", "action_high"):
        value = env_args.get(key)
        if value is not None:
            if not isinstance(value, list) or not all(_is_number(v) for v in value):
                raise bad(key, "a list of numbers")
            if action_dim is not None and len(value) != action_dim:
                raise DatasetError(f"{source}: env_args[{key!r}] has {len(value)} values but actions have {action_dim}")
            value = tuple(float(v) for v in value)
        bounds[key] = value
    low, high = bounds["action_low"], bounds["action_high"]
    if low is not None and high is not None and any(lo > hi for lo, hi in zip(low, high)):
        raise DatasetError(f"{source}: env_args action_low exceeds action_high somewhere; check the bounds")
    env_name = env_args.get("env_name")
    return EnvInfo(task, low, high, read_obs_keys(env_args, source), str(env_name) if env_name else None)


def read_obs_keys(env_args: Any, source: str) -> tuple[str, ...] | None:
    """``env_args["obs_keys"]`` validated, or None when the file does not record it. Readers use
    only this, so a file whose other env_args are odd still loads for inspection."""
    obs_keys = env_args.get("obs_keys") if isinstance(env_args, dict) else None
    if obs_keys is None:
        return None
    if not isinstance(obs_keys, list) or not obs_keys or not all(isinstance(k, str) for k in obs_keys):
        raise DatasetError(f"{source}: env_args['obs_keys'] must be a non-empty list of key names, got {obs_keys!r}")
    if len(set(obs_keys)) != len(obs_keys):
        raise DatasetError(f"{source}: env_args['obs_keys'] names a key twice: {obs_keys}")
    return tuple(obs_keys)


def _is_number(v: Any) -> bool:
    """A JSON number other than NaN (an unbounded action space records -inf/inf)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
