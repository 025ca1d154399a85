"""Experts that produce demonstrations: ``expert(obs [N, obs_dim]) -> actions [N, action_dim]``.

* ``metaworld:*`` -- Meta-World's bundled scripted policies;
* ``robotics:FetchReach/FetchPush/FetchPickAndPlace-v4`` -- scripted experts written here;
* ``gym:Hopper-v5`` / ``gym:Walker2d-v5`` -- SAC actors trained by
  ``experiments/train_locomotion_expert.py`` (weights committed in ``weights/``); these and
  ``gym:HalfCheetah-v5`` also have D4RL-style ``expert`` / ``medium`` levels.

Register another with :func:`register_expert`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

from dpft.base_policies.infra.errors import TaskError
from dpft.envs.shift import split_shift
from dpft.envs.tasks import parse_task_id

Expert = Callable[[np.ndarray], np.ndarray]
EXPERTS: dict[str, Callable[[str], Expert]] = {}


def register_expert(family: str):
    """Decorator: ``builder(task_name) -> Expert`` for tasks of ``family``."""

    def deco(builder):
        EXPERTS[family] = builder
        return builder

    return deco


def get_expert(task_id: str, level: str | None = None) -> Expert:
    """The task's expert; ``level`` picks one of several skill levels where a family has them
    (locomotion: ``expert``, ``medium``). On a shifted task (``+action_gain=...``) it is the plain
    task's expert, unaware of the shift, as a demonstrator on another robot would be."""
    tid = parse_task_id(split_shift(task_id)[0])
    if tid.family not in EXPERTS:
        raise TaskError(f"no expert for task {task_id!r}; experts exist for families {sorted(EXPERTS)}")
    builder = EXPERTS[tid.family]
    if level is None:
        return builder(tid.name)
    if "level" not in inspect.signature(builder).parameters:
        raise TaskError(f"the {tid.family} experts have one level; drop --expert-level {level}")
    return builder(tid.name, level=level)


def expert_on_slots(expert: Expert, obs: np.ndarray, slots: list[int], total: int) -> np.ndarray:
    """The expert's actions for this process's rows ``obs`` (env slots ``slots`` of ``total``),
    computed on a batch of all ``total`` rows (copies of the first where another process runs the
    slot): a torch expert's rows depend on the batch size, so one process and several give the
    same actions (see ``policy_chunk_fn``)."""
    if len(slots) == total:
        return expert(obs)
    full = np.repeat(obs[:1], total, 0)
    full[slots] = obs
    return expert(full)[slots]


from dpft.envs.experts import fetch, locomotion, metaworld  # noqa: E402,F401  (registration)
