"""Wrappers that give every task the same contract.

* flat ``Box`` float32 observation (dict observations flattened by
  ``gymnasium.spaces.flatten``: keys in the order of the env's ``Dict`` space, which
  gymnasium sorts by name -- for Fetch ``achieved_goal, desired_goal, observation``);
* ``info["success"]`` as a Python ``bool`` whenever the task defines success (Meta-World and
  Adroit report ``success``, Fetch ``is_success``);
* ``terminated`` distinct from ``truncated`` (time limits only ever set ``truncated``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class FlatFloatObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Flatten any observation space to a float32 ``Box`` with the env's own bounds."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        self._space = env.observation_space
        flat = spaces.flatten_space(env.observation_space)
        low = np.nan_to_num(flat.low.astype(np.float32), neginf=-np.inf)
        high = np.nan_to_num(flat.high.astype(np.float32), posinf=np.inf)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        return np.asarray(spaces.flatten(self._space, observation), dtype=np.float32)


class SuccessInfo(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Copy the task's own success flag into ``info["success"]`` as a bool."""

    def __init__(self, env: gym.Env, key: str = "success") -> None:
        gym.utils.RecordConstructorArgs.__init__(self, key=key)
        gym.Wrapper.__init__(self, env)
        self.key = key

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info["success"] = bool(info.get(self.key, False))
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["success"] = bool(info.get(self.key, False))
        return obs, float(reward), bool(terminated), bool(truncated), info
