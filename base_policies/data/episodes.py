"""In-memory episodes and their validation.

Every reader turns its file format into a list of :class:`Episode`; validation happens
here once, so every format reports a bad demo the same way (naming the demo and the key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpft.base_policies.infra.errors import DatasetError


@dataclass
class Episode:
    """One demonstration: ``obs[t]`` is observed before ``actions[t]`` is taken."""

    name: str
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray | None = None
    dones: np.ndarray | None = None
    success_step: int | None = None
    """Steps until the task first reported success (1-based: the transition ``success_step - 1``
    succeeded), -1 if it never did, None if the file does not say (what a residual run needs to
    give demonstrations the sparse success reward; ``dpft collect`` records it)."""

    def __len__(self) -> int:
        return len(self.actions)


@dataclass
class Demonstrations:
    """Episodes plus file-level attributes (e.g. the environment they came from)."""

    episodes: list[Episode]
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    obs_keys: tuple[str, ...] | None = None
    """Keys of an observation group concatenated, in this order, into ``obs`` (None: one dataset)."""

    @property
    def obs_dim(self) -> int:
        return self.episodes[0].obs.shape[1]

    @property
    def action_dim(self) -> int:
        return self.episodes[0].actions.shape[1]

    @property
    def num_steps(self) -> int:
        return sum(len(e) for e in self.episodes)


def _as_2d(name: str, key: str, arr: Any, source: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiub":
        raise DatasetError(f"{source}: {name}/{key} has non-numeric dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim > 2:
        arr = arr.reshape(len(arr), -1)
    return arr


def make_episode(name: str, source: str, obs: Any, actions: Any, rewards: Any = None, dones: Any = None) -> Episode:
    """Build and validate one episode; raises :class:`DatasetError` naming demo and key."""
    o = _as_2d(name, "obs", obs, source)
    a = _as_2d(name, "actions", actions, source)
    if len(a) == 0:
        raise DatasetError(f"{source}: {name} has no actions")
    if len(o) != len(a):
        raise DatasetError(f"{source}: {name} has {len(o)} observations but {len(a)} actions; they must match")
    r = None if rewards is None else np.asarray(rewards, dtype=np.float32).reshape(-1)
    d = None if dones is None else np.asarray(dones).astype(bool).reshape(-1)
    for key, arr in (("obs", o), ("actions", a), ("rewards", r)):
        if arr is not None and not np.isfinite(arr).all():
            bad = int(np.argwhere(~np.isfinite(arr))[0][0])
            raise DatasetError(f"{source}: {name}/{key} contains NaN or inf (first at step {bad})")
    for key, arr in (("rewards", r), ("dones", d)):
        if arr is not None and len(arr) != len(a):
            raise DatasetError(f"{source}: {name}/{key} has length {len(arr)} but there are {len(a)} actions")
    return Episode(name, o, a, r, d)


def check_consistent(demos: Demonstrations) -> Demonstrations:
    """All episodes must share observation and action sizes."""
    if not demos.episodes:
        raise DatasetError(f"{demos.source}: no episodes found")
    first = demos.episodes[0]
    for ep in demos.episodes[1:]:
        if ep.obs.shape[1] != first.obs.shape[1] or ep.actions.shape[1] != first.actions.shape[1]:
            raise DatasetError(
                f"{demos.source}: {ep.name} has obs/action sizes {ep.obs.shape[1]}/{ep.actions.shape[1]} "
                f"but {first.name} has {first.obs.shape[1]}/{first.actions.shape[1]}"
            )
    return demos
