"""DSRL-SAC: stable-baselines3 SAC over the base policy's noise, warmed up with N(0, I)."""

from __future__ import annotations

import numpy as np
from stable_baselines3 import SAC


class DSRLSAC(SAC):
    """SAC whose warm-up actions are N(0, I) noise (clipped to the bound) instead of uniform
    noise: the first transitions in the replay buffer are the base policy's own behaviour."""

    def _sample_action(self, learning_starts, action_noise=None, n_envs=1):
        if self.num_timesteps < learning_starts:
            m = self.action_space.high
            unscaled = np.clip(np.random.standard_normal((n_envs, *self.action_space.shape)), -m, m)
            unscaled = unscaled.astype(np.float32)
            return unscaled, self.policy.scale_action(unscaled)
        return super()._sample_action(learning_starts, action_noise, n_envs)
