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

Residual-TD3 can also keep its actor near the actions in the replay (``bc_alpha``, TD3+BC,
Fujimoto & Gu 2021). After the critic warm-up the critic has only seen ``r = 0`` and the
demonstrations' corrections; plain TD3's actor climbs the critic's extrapolation to the edge of
the residual's range: 5k env steps after the actor started, every benchmark seed on push-mh,
pick-place-mh and peg-insert-side-mh was at 0.00-0.07 success (bases 0.40-0.73). The BC term
pulls the actor toward what was actually run (the base's ``r = 0`` early on, the demonstrated
corrections, later its own exploring actions), and the critic's term is normalised by the batch's
mean |Q| so one ``bc_alpha`` fits any reward scale.

The ramp's coin flips draw from NumPy's global generator, which the checkpoint saves, so a
resumed run makes the same choices.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.utils import polyak_update


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
    """SB3 TD3 with base-only warm-up, critic warm-up, progressive exploration and, with
    ``bc_alpha > 0``, TD3+BC's actor loss ``-bc_alpha * Q / mean|Q| + (actor(s) - a)^2``."""

    bc_alpha: float = 0.0

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        if not self.bc_alpha:
            return super().train(gradient_steps, batch_size)
        self.policy.set_training_mode(True)
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        logs: dict[str, list[float]] = {"actor_loss": [], "critic_loss": [], "bc_loss": []}
        for _ in range(gradient_steps):
            self._n_updates += 1
            batch = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            discounts = batch.discounts if batch.discounts is not None else self.gamma
            with torch.no_grad():  # TD3's target: target-policy smoothing, minimum over the critics
                noise = torch.randn_like(batch.actions) * self.target_policy_noise
                noise = noise.clamp(-self.target_noise_clip, self.target_noise_clip)
                next_actions = (self.actor_target(batch.next_observations) + noise).clamp(-1, 1)
                next_q = torch.cat(self.critic_target(batch.next_observations, next_actions), dim=1)
                target = batch.rewards + (1 - batch.dones) * discounts * next_q.min(dim=1, keepdim=True).values
            critic_loss = sum(F.mse_loss(q, target) for q in self.critic(batch.observations, batch.actions))
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()
            logs["critic_loss"].append(critic_loss.item())
            if self._n_updates % self.policy_delay:
                continue
            action = self.actor(batch.observations)
            q = self.critic.q1_forward(batch.observations, action)
            bc = F.mse_loss(action, batch.actions)
            actor_loss = -self.bc_alpha * q.mean() / q.abs().mean().detach().clamp(min=1e-6) + bc
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()
            logs["actor_loss"].append(actor_loss.item())
            logs["bc_loss"].append(bc.item())
            polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
            polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        for key, values in logs.items():
            if values:
                self.logger.record(f"train/{key}", float(np.mean(values)))
