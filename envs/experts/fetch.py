"""Scripted experts for Fetch Reach, Push and PickAndPlace (v4).

Flattened Fetch observation (see ``envs.contract``): ``[achieved_goal 3, desired_goal 3,
observation 25]``; inside ``observation``: gripper position 0:3, object position 3:6,
object relative position 6:9, finger widths 9:11. Actions: xyz displacement (scaled by 0.05 m
in the env) and gripper command (+1 open, -1 close).
"""

from __future__ import annotations

import numpy as np

from dpft.base_policies.infra.errors import TaskError
from dpft.envs.experts import register_expert

GAIN = 10.0  # displacement per metre of error, before clipping to [-1, 1]


def _move(target: np.ndarray, grip: np.ndarray) -> np.ndarray:
    return np.clip(GAIN * (target - grip), -1, 1)


def _reach(o: np.ndarray) -> np.ndarray:
    return np.concatenate([_move(o[3:6], o[6:9]), [0.0]])


def _push(o: np.ndarray) -> np.ndarray:
    """Get behind the object (seen from the goal), coming in from above, then push through it."""
    goal, grip, obj = o[3:6], o[6:9], o[9:12]
    direction = (goal[:2] - obj[:2]) / (np.linalg.norm(goal[:2] - obj[:2]) + 1e-8)
    behind = obj[:2] - 0.06 * direction
    gap = np.linalg.norm(grip[:2] - behind)
    if gap > 0.02:
        target = np.array([*behind, obj[2] + (0.06 if gap > 0.03 else 0.0)])
    else:
        target = np.array([*(grip[:2] + 0.05 * direction), obj[2]])
    return np.concatenate([_move(target, grip), [-1.0]])


def _pick_place(o: np.ndarray) -> np.ndarray:
    goal, grip, obj, rel = o[3:6], o[6:9], o[9:12], o[12:15]
    fingers = o[15:17].sum()
    if np.linalg.norm(rel[:2]) > 0.01 or (abs(rel[2]) > 0.01 and fingers > 0.06):
        above = obj + np.array([0, 0, 0.05 if np.linalg.norm(rel[:2]) > 0.01 else 0.0])
        return np.concatenate([_move(above, grip), [1.0]])
    if fingers > 0.055:
        return np.array([0, 0, 0, -1.0])
    return np.concatenate([_move(goal, obj), [-1.0]])


_SCRIPTS = {"FetchReach-v4": _reach, "FetchPush-v4": _push, "FetchPickAndPlace-v4": _pick_place}


@register_expert("robotics")
def fetch_expert(name: str):
    script = _SCRIPTS.get(name)
    if script is None:
        raise TaskError(f"no scripted expert for robotics:{name}; available: {sorted(_SCRIPTS)}")
    return lambda obs: np.stack([script(o) for o in obs]).astype(np.float32)
