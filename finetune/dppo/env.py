"""The environment DPPO acts in: the action is a denoising chain, the env executes its last state."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from dpft.base_policies.policy import DenoisingPolicy
from dpft.envs.chunking import ChunkedEnv


class ChainEnv(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Observation: the flattened observation history. Action: a :class:`ChainPolicy` action row
    (the normalised chain, then log-probabilities the env ignores); the chunk executed is the
    chain's last state in environment units, as the base's own sampler would turn it
    (``finish``, then the normaliser and the action bounds, which fine-tuning never changes)."""

    def __init__(self, env: ChunkedEnv, base: DenoisingPolicy, action_size: int, report_success: bool = False) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, base=base, action_size=action_size, report_success=report_success
        )
        gym.Wrapper.__init__(self, env)
        self.base, self.report_success = base, report_success
        obs_space = env.observation_space
        self.observation_space = spaces.Box(obs_space.low.reshape(-1), obs_space.high.reshape(-1), dtype=np.float32)
        # SB3 wants finite bounds; none is ever reached (a chain's states are O(1), log-probs O(100))
        self.action_space = spaces.Box(-1e6, 1e6, (action_size,), dtype=np.float32)
        self.chunk_size = int(np.prod(base.noise_shape))
        self.steps = len(base.timesteps)

    def reset(self, *, seed: int | None = None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return obs.reshape(-1), info

    @torch.no_grad()
    def chunk_of(self, action: np.ndarray) -> np.ndarray:
        end = (self.steps + 1) * self.chunk_size
        last = torch.as_tensor(np.asarray(action, np.float32)[end - self.chunk_size : end], device=self.base.device)
        x = last.view(1, *self.base.noise_shape)
        return self.base.to_env_units(self.base.finish(x))[0].cpu().numpy()

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(self.chunk_of(action))
        if self.report_success and "episode" in info:
            info["is_success"] = info["episode"]["success"]  # SB3 logs rollout/success_rate from this
        return obs.reshape(-1), reward, terminated, truncated, info
