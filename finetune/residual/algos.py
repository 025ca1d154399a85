"""SB3 SAC and TD3 with the three schedules the residual-RL papers found decisive.

* **Base-only warm-up** (``learning_starts``): the first transitions have ``r = 0``, i.e. the
  base policy's own behaviour, instead of SB3's uniform random actions.
* **Critic warm-up** (``critic_warmup``): for that many gradient steps after learning starts only
  the critic learns; the actor (and SAC's temperature) waits until the critic has a sensible
  value for the base's behaviour (their learning rate is held at 0).
* **Progressive exploration** (``explore_ramp``): after both warm-ups (``explore_after``
  transitions), each env's action is the residual's sampled action with a probability that ramps
  linearly from 0 to 1 over ``explore_ramp`` transitions, else ``r = 0`` (the base). Until then
  every action is ``r = 0``. The buffer stores the action that actually ran.

The ramp's coin flips draw from NumPy's global generator, which the checkpoint saves, so a
resumed run makes the same choices.
"""

from __future__ import annotations

import numpy as np
from stable_baselines3 import SAC, TD3


class BaseFirst:
    """Mixin for an SB3 off-policy algorithm (see the module docstring)."""

    critic_warmup: int = 0
    explore_after: int = 0
    explore_ramp: int = 0

    def _sample_action(self, learning_starts, action_noise=None, n_envs=1):
        if self.num_timesteps < max(learning_starts, self.explore_after):
            zeros = np.zeros((n_envs, *self.action_space.shape), np.float32)
            return zeros, self.policy.scale_action(zeros)
        action, buffer_action = super()._sample_action(learning_starts, action_noise, n_envs)
        if self.explore_ramp > 0:
            share = min(1.0, (self.num_timesteps - self.explore_after) / self.explore_ramp)
            base_only = np.random.random(n_envs) >= share
            action[base_only] = 0.0
            buffer_action[base_only] = self.policy.scale_action(np.zeros_like(action[base_only]))
        return action, buffer_action

    def _update_learning_rate(self, optimizers) -> None:
        super()._update_learning_rate(optimizers)
        if self._n_updates < self.critic_warmup:
            critic_opt = self.critic.optimizer
            for opt in optimizers if isinstance(optimizers, list) else [optimizers]:
                if opt is not critic_opt:
                    for group in opt.param_groups:
                        group["lr"] = 0.0


class ResidualSAC(BaseFirst, SAC):
    """SB3 SAC with base-only warm-up, critic warm-up and progressive exploration."""


class ResidualTD3(BaseFirst, TD3):
    """SB3 TD3 with base-only warm-up, critic warm-up and progressive exploration."""
