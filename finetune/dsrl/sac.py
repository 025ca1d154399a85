"""DSRL-SAC: stable-baselines3 SAC over the base policy's noise, warmed up with N(0, I)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from stable_baselines3 import SAC


class DSRLSAC(SAC):
    """SAC whose warm-up actions are N(0, I) noise (clipped to the bound) instead of uniform
    noise: the first transitions in the replay buffer are the base policy's own behaviour.

    ``critic_warmup`` (gradient steps after learning starts): only the critics learn, and the
    rollouts go on using the base's N(0, I) noise until ``explore_after`` transitions. The actor
    (and the temperature) wait until the critics have a value for the base's own behaviour, so
    the actor's first steps climb a critic fitted on thousands of transitions, not on the
    warm-up's few hundred (the residual methods' critic warm-up, here over noise).

    ``actor_lr``: the actor's own learning rate (None: the shared one), so the actor can move
    slower than the critics it climbs. ``actor_ema`` (a decay per gradient step, 0: off): an
    exponential moving average of the actor's weights, ``policy.actor_ema``, kept beside the
    actor; it is what the run evaluates and hands out (``steered_from``), while exploration and
    the TD targets use the actor itself. It lives inside the policy, so it is saved and resumed
    with it."""

    def __init__(
        self,
        *args: Any,
        critic_warmup: int = 0,
        explore_after: int = 0,
        actor_lr: float | None = None,
        actor_ema: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.critic_warmup, self.explore_after = critic_warmup, explore_after
        self.actor_lr, self.actor_ema = actor_lr, actor_ema
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        if self.actor_ema > 0:  # a registered submodule: in the policy's state dict, in no optimizer
            self.policy.actor_ema = copy.deepcopy(self.actor).requires_grad_(False)

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        super().train(gradient_steps, batch_size)
        self.update_actor_ema(gradient_steps)

    @torch.no_grad()
    def update_actor_ema(self, gradient_steps: int) -> None:
        """Fold the actor into its average after ``gradient_steps`` steps (decay ** steps)."""
        if self.actor_ema <= 0 or self.in_critic_warmup():
            return
        weight = 1.0 - self.actor_ema**gradient_steps
        shadow, live = list(self.policy.actor_ema.parameters()), [p.detach() for p in self.actor.parameters()]
        torch._foreach_lerp_(shadow, live, weight)

    def in_critic_warmup(self, step: int = 0) -> bool:
        """Whether gradient step ``step`` of the current ``train`` call trains the critics only."""
        return self._n_updates + step < self.critic_warmup

    def _sample_action(self, learning_starts, action_noise=None, n_envs=1):
        if self.num_timesteps < max(learning_starts, self.explore_after):
            m = self.action_space.high
            unscaled = np.clip(np.random.standard_normal((n_envs, *self.action_space.shape)), -m, m)
            unscaled = unscaled.astype(np.float32)
            return unscaled, self.policy.scale_action(unscaled)
        return super()._sample_action(learning_starts, action_noise, n_envs)

    def _update_learning_rate(self, optimizers) -> None:
        """SB3's SAC ``train``: during the critic warm-up the actor's and the temperature's
        learning rates are 0 (DSRL-NA skips their steps instead)."""
        super()._update_learning_rate(optimizers)
        if self.actor_lr is not None:
            for group in self.actor.optimizer.param_groups:
                group["lr"] = self.actor_lr
        if self.in_critic_warmup():
            for opt in (self.actor.optimizer, self.ent_coef_optimizer):
                for group in opt.param_groups if opt is not None else []:
                    group["lr"] = 0.0
