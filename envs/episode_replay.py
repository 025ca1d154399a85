"""Exact save/restore of an environment mid-episode, by replay.

A MuJoCo task's state is more than ``qpos``/``qvel`` (Meta-World keeps goals and object
positions in Python attributes, wrappers keep observation histories and episode statistics),
and pickling simulators is fragile. What *is* simple to store: the seed an episode was reset
with and the actions taken since. Every task here is deterministic given those, so stepping
them again rebuilds the whole wrapper stack's state, bit for bit on the same machine.

:class:`ReplayableEpisodes` (the outermost wrapper) seeds *every* episode, not just the
first: episode ``k`` after ``reset(seed=s)`` is reset with a seed drawn from
``SeedSequence([s, k])``. A resumed run therefore continues the same sequence of start states
instead of replaying the episodes from the beginning of training.

>>> env = ReplayableEpisodes(gym.make("Pendulum-v1"))
>>> obs, _ = env.reset(seed=3)
>>> obs, *_ = env.step(np.ones(1, np.float32))
>>> state = env.get_state()
>>> other = ReplayableEpisodes(gym.make("Pendulum-v1"))
>>> bool(np.array_equal(other.set_state(state), obs))
True
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class ReplayableEpisodes(gym.Wrapper, gym.utils.RecordConstructorArgs):
    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        self._seed: int | None = None
        self._episode = -1
        self._options: dict[str, Any] | None = None
        self._actions: list[np.ndarray] = []

    def _episode_seed(self) -> int | None:
        if self._seed is None:
            return None
        return int(np.random.SeedSequence([self._seed, self._episode]).generate_state(1)[0])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._seed, self._episode = int(seed), 0
        else:
            self._episode += 1
        self._options, self._actions = options, []
        return self.env.reset(seed=self._episode_seed(), options=options)

    def step(self, action):
        self._actions.append(np.array(action, copy=True))
        return self.env.step(action)

    def get_state(self) -> dict[str, Any] | None:
        """Everything needed to bring a fresh copy of this env to its current state (None before
        the first seeded reset: there is nothing to restore, a resumed run resets)."""
        if self._seed is None:
            return None
        actions = np.stack(self._actions) if self._actions else np.zeros((0, *self.action_space.shape), np.float32)
        return {"seed": self._seed, "episode": self._episode, "actions": actions, "options": self._options}

    def set_state(self, state: dict[str, Any]) -> np.ndarray:
        """Reset to the stored episode's start and replay its actions; returns the observation."""
        self._seed, self._episode = int(state["seed"]), int(state["episode"])
        self._options, self._actions = state.get("options"), []
        obs, _ = self.env.reset(seed=self._episode_seed(), options=self._options)
        for action in state["actions"]:
            obs, *_ = self.step(action)
        return obs
