"""DSRL's environment: the action is the frozen base policy's initial noise.

The base policy is a black box ``(observation history, noise) -> action chunk``; this wrapper
denoises the agent's noise into a chunk and executes it through :class:`ChunkedEnv`. Any
stable-baselines3 algorithm can then train on top, without gradients through the base.

    agent ──w (flattened noise, |w_i| <= action_magnitude)──► NoiseActionEnv
                                                              │ chunk = base.predict_chunk(obs_hist, w)
                                                              ▼
                                                          ChunkedEnv ──► task
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from base_policies.policy import Policy
from envs.chunking import ChunkedEnv


class NoiseActionEnv(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Observation: the flattened observation history. Action: the flattened initial noise,
    bounded by ``action_magnitude``. ``info["executed_chunk"]`` holds the actions that ran
    (``action_horizon`` rows, zero-padded if the episode ended inside the chunk) and
    ``info["steps"]`` how many, for an action-space critic and per-step discounting."""

    def __init__(self, env: ChunkedEnv, base: Policy, action_magnitude: float = 1.5) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, base=base, action_magnitude=action_magnitude)
        gym.Wrapper.__init__(self, env)
        self.base = base
        self.action_magnitude = action_magnitude
        self.noise_shape = base.noise_shape
        obs_space = env.observation_space
        self.observation_space = spaces.Box(obs_space.low.reshape(-1), obs_space.high.reshape(-1), dtype=np.float32)
        n = int(np.prod(self.noise_shape))
        self.action_space = spaces.Box(-action_magnitude, action_magnitude, (n,), dtype=np.float32)
        self._obs: np.ndarray | None = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        return obs.reshape(-1), info

    def chunk_for(self, obs_hist: np.ndarray, noise: np.ndarray) -> np.ndarray:
        w = torch.as_tensor(noise, dtype=torch.float32).reshape(1, *self.noise_shape)
        return self.base.predict_chunk(torch.from_numpy(obs_hist)[None], w)[0].numpy()

    def step(self, action):
        noise = np.clip(np.asarray(action, np.float32), -self.action_magnitude, self.action_magnitude)
        chunk = self.chunk_for(self._obs, noise)
        obs, reward, terminated, truncated, info = self.env.step(chunk)
        self._obs = obs
        executed = np.zeros((self.env.action_horizon, chunk.shape[-1]), np.float32)
        executed[: info["steps"]] = chunk[: info["steps"]]
        info["executed_chunk"] = executed
        return obs.reshape(-1), reward, terminated, truncated, info
