"""A tiny registered gymnasium task for fast fine-tuning tests (also exercises user env ids).

``toy_envs:Obstacle-v0``: a 2-D point starts near the origin; each action is the next waypoint
(absolute position). An obstacle sits at (0, 1). The episode lasts 8 steps; it succeeds if
the point passes the obstacle on the RIGHT (x > 0.5 at height y ~ 1). The demonstrations in
``synthetic.bimodal_episodes`` go left 70% of the time, so a BC policy succeeds ~30%: a
policy that must *choose its mode* to improve, which is what steering the noise can do.

``toy_envs:Reach-v0``: a 2-D point starts near the origin and must end within 0.1 of the goal
(1, 0.5); each action is a displacement in [-1, 1]^2 times 0.25. The reward is minus the
distance to the goal; reaching it ends the episode (success). The episode's step limit is drawn
at reset from 8-12, so episodes in a vector env end at different steps. The demonstrations in
``synthetic.offset_reach_episodes`` aim 0.4 above the goal: a BC policy is wrong by a constant
offset that no initial noise can fix, and a residual can.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class Obstacle(gym.Env):
    observation_space = gym.spaces.Box(-5, 5, (2,), np.float32)
    action_space = gym.spaces.Box(-3, 3, (2,), np.float32)

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.passed_right = 0, False
        self.pos = self.np_random.normal(0, 0.05, 2).astype(np.float32)
        return self.pos.copy(), {"success": False}

    def step(self, action):
        self.pos = np.clip(np.asarray(action, np.float32), -3, 3)
        self.t += 1
        if 0.75 <= self.pos[1] <= 1.25 and self.pos[0] > 0.5:
            self.passed_right = True
        done = self.t >= 8
        success = bool(done and self.passed_right)
        return self.pos.copy(), float(success), False, done, {"success": success}


class Reach(gym.Env):
    GOAL = np.array([1.0, 0.5], np.float32)
    STEP = 0.25
    observation_space = gym.spaces.Box(-5, 5, (2,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.limit = 0, int(self.np_random.integers(8, 13))
        self.pos = self.np_random.normal(0, 0.05, 2).astype(np.float32)
        return self.pos.copy(), {"success": False}

    def step(self, action):
        self.pos = np.clip(self.pos + self.STEP * np.clip(action, -1, 1), -5, 5).astype(np.float32)
        self.t += 1
        dist = float(np.linalg.norm(self.pos - self.GOAL))
        success = dist < 0.1
        return self.pos.copy(), -dist, success, self.t >= self.limit and not success, {"success": success}


gym.register("Obstacle-v0", entry_point=Obstacle)
gym.register("Reach-v0", entry_point=Reach)
