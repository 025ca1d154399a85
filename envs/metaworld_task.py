"""Meta-World v3 single tasks with a fresh random object/goal position at every reset.

Meta-World's goal-observable classes freeze the random start after construction (so a
benchmark can fix a set of start states) and ignore ``reset(seed=...)``. Here the start is
re-drawn at every reset from the env's own generator, which ``reset(seed=s)`` re-seeds,
so episode ``k`` after ``reset(seed=s)`` is the same on every run.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from dpft.base_policies.infra.errors import TaskError


class MetaWorldTask(gym.Env):
    """Adapter exposing one Meta-World task as a gymnasium env with seeded random starts."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, name: str, max_episode_steps: int = 500, render_mode: str | None = None) -> None:
        try:
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE as ENVS
        except ImportError as e:
            raise TaskError(f"Meta-World is not installed ({e}); run: pip install 'metaworld==3.1.1'") from None
        key = f"{name}-goal-observable"
        if key not in ENVS:
            known = sorted(k.removesuffix("-goal-observable") for k in ENVS)
            raise TaskError(f"unknown Meta-World task {name!r}; known: {', '.join(known)}")
        self.env = ENVS[key](seed=0, render_mode=render_mode)
        self.env._freeze_rand_vec = False
        self.env.seeded_rand_vec = True
        self.env.max_path_length = max_episode_steps
        self.render_mode = render_mode
        self.action_space = self.env.action_space
        # Meta-World's declared bounds do not contain its own reset observations (the goal
        # bounds are a single point), so declare an unbounded Box of the same shape.
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, self.env.observation_space.shape, np.float32)

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.env.seed(int(seed))
        obs, info = self.env.reset()
        return obs.astype(np.float32), {**info, "success": False}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        info["success"] = bool(info.get("success", False))
        return obs.astype(np.float32), float(reward), bool(terminated), bool(truncated), info

    def render(self):
        return self.env.render()

    def close(self) -> None:
        self.env.close()
