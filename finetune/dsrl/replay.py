"""A replay buffer that also keeps, per transition, the executed action chunk and the
(noise, chunk) pairs DSRL-NA distils its noise critic on.

SB3's ``ReplayBuffer`` stores what the agent chose (here: the scaled noise). DSRL-NA's
action-space critic needs what the robot actually did, which :class:`NoiseActionEnv` reports
in ``info``; ``add`` picks it up from there, so SB3's collection loop is used unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from stable_baselines3.common.buffers import ReplayBuffer


class ChunkReplaySamples(NamedTuple):
    observations: torch.Tensor
    actions: torch.Tensor  # scaled noise in [-1, 1], as SB3 stores it
    next_observations: torch.Tensor
    dones: torch.Tensor  # 1 only for true terminals; time limits are bootstrapped
    rewards: torch.Tensor
    chunks: torch.Tensor  # executed actions, flattened (zero rows after an episode's end)
    distill_noise: torch.Tensor  # (B, M, noise_dim), unscaled, clipped to the bound
    distill_chunks: torch.Tensor  # (B, M, chunk_dim): the base's executed rows for that noise


class ChunkReplayBuffer(ReplayBuffer):
    def __init__(self, *args: Any, chunk_dim: int, distill_samples: int, noise_dim: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunk_dim, self.distill_samples, self.noise_dim = chunk_dim, distill_samples, noise_dim
        shape = (self.buffer_size, self.n_envs)
        self.chunks = np.zeros((*shape, chunk_dim), np.float32)
        self.distill_noise = np.zeros((*shape, distill_samples, noise_dim), np.float32)
        self.distill_chunks = np.zeros((*shape, distill_samples, chunk_dim), np.float32)

    def add(self, obs, next_obs, action, reward, done, infos: list[dict[str, Any]]) -> None:
        pos = self.pos  # super().add advances it
        self.chunks[pos] = np.stack([info["executed_chunk"].reshape(-1) for info in infos])
        if self.distill_samples:
            self.distill_noise[pos] = np.stack([info["distill_noise"] for info in infos])
            self.distill_chunks[pos] = np.stack([info["distill_chunk"] for info in infos])
        super().add(obs, next_obs, action, reward, done, infos)

    def _get_samples(self, batch_inds: np.ndarray, env=None) -> ChunkReplaySamples:
        envs = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        if self.optimize_memory_usage:
            next_obs = self.observations[(batch_inds + 1) % self.buffer_size, envs]
        else:
            next_obs = self.next_observations[batch_inds, envs]
        data = (
            self._normalize_obs(self.observations[batch_inds, envs], env),
            self.actions[batch_inds, envs],
            self._normalize_obs(next_obs, env),
            (self.dones[batch_inds, envs] * (1 - self.timeouts[batch_inds, envs])).reshape(-1, 1),
            self._normalize_reward(self.rewards[batch_inds, envs].reshape(-1, 1), env),
            self.chunks[batch_inds, envs],
            self.distill_noise[batch_inds, envs],
            self.distill_chunks[batch_inds, envs],
        )
        return ChunkReplaySamples(*(self.to_torch(x) for x in data))
