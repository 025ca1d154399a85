"""Shifted dynamics: a task whose actuators differ from the demonstrations'.

A behaviour-cloned policy is only as good as the match between the robot it runs on and the one
that was demonstrated. Two simple, common mismatches are selectable on any task id with a suffix:

* ``+action_gain=G``: every action is scaled by G before it reaches the simulator (a weaker or
  stronger actuator: ``metaworld:peg-insert-side-v3+action_gain=0.7``);
* ``+action_offset=B``: B is added to every action coordinate (a calibration bias or a constant
  drift: ``gym:Hopper-v5+action_offset=0.1``).

Both can be combined (``+action_gain=0.8+action_offset=-0.05``); the result is clipped to the
action bounds. The suffix is part of the task id, so it is recorded wherever the task is (run
configs, policy folders, preference files) and a policy trained on the plain task is noted as
running on another one. Such a shift is where steering the noise has no room (every chunk the
base can produce is scaled the same way) and a residual correction can still help.
"""

from __future__ import annotations

import math
import re

import gymnasium as gym
import numpy as np

from dpft.base_policies.infra.errors import TaskError

MODIFIERS = {"action_gain": (1.0, "a positive number"), "action_offset": (0.0, "a number")}
"""Known suffixes, their neutral value and what a value must be."""

_PART = re.compile(r"^([a-z_]+)=(.*)$")


def split_shift(task_id: str) -> tuple[str, dict[str, float]]:
    """``"metaworld:push-v3+action_gain=0.7"`` -> ``("metaworld:push-v3", {"action_gain": 0.7})``;
    an id without a suffix comes back unchanged with no modifiers."""
    head, *parts = task_id.split("+")
    if not parts:
        return task_id, {}
    shift: dict[str, float] = {}
    for part in parts:
        m = _PART.match(part.strip())
        if m is None or m.group(1) not in MODIFIERS:
            known = ", ".join(f"+{k}=..." for k in MODIFIERS)
            raise TaskError(f"task id {task_id!r}: unknown modifier {part!r}; known: {known}")
        name, text = m.groups()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (name == "action_gain" and value <= 0):
            raise TaskError(f"task id {task_id!r}: {name} must be {MODIFIERS[name][1]}, got {text!r}")
        shift[name] = value
    return head, shift


class ShiftedDynamics(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """``action -> clip(gain * action + offset, low, high)`` (see the module docstring)."""

    def __init__(self, env: gym.Env, action_gain: float = 1.0, action_offset: float = 0.0) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, action_gain=action_gain, action_offset=action_offset)
        gym.ActionWrapper.__init__(self, env)
        self.gain, self.offset = float(action_gain), float(action_offset)

    def action(self, action: np.ndarray) -> np.ndarray:
        shifted = self.gain * np.asarray(action, dtype=np.float64) + self.offset
        space = self.env.action_space
        return np.clip(shifted, space.low, space.high).astype(space.dtype)
