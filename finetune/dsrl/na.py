"""DSRL-NA (noise aliasing): an action-space critic, distilled into a noise-space critic.

Many noises map to the same action chunk. A critic over noise must learn each of them
separately from the transitions where that noise was chosen; a critic over *actions* learns
once per action and lets every aliasing noise share it. So, per gradient step:

1. Action critic Q_A(s, a), on executed chunks from the replay buffer, with the usual soft TD
   target r + γ_chunk (min Q_A'(s', base(s', w')) - α log π(w'|s')), w' ~ π(s').
2. Noise critic Q_W(s, w) regressed, head by head, onto Q_A(s, base(s, w)) for noises
   w ~ N(0, I) (denoised at collection time, see ``NoiseActionEnv.distill_samples``), the
   noise the agent actually chose with the chunk it produced, and (``distill_policy_noise``)
   the actor's own samples w' ~ π(s') with the chunks the TD target already denoised.
3. Actor trained against min Q_W, with temperature α as in SAC.

``noise_prior``: SAC's entropy bonus -α log π(w|s) becomes -α KL(π(·|s) ‖ N(0, I)), the
distance to the noise the base policy was trained on (SB3's ``target_entropy`` is then minus
the target KL per decision). Where Q_W is flat or wrong the pull is toward the base's own
noise (mean 0), instead of a maximum-entropy noise that SAC lets drift into
regions where the base produces chunks it never saw in training — on push a drift of the mean
noise to a norm of about 3 took success from 0.5 to 0.05 while the critics saw no difference.

``q_scaled_temperature``: the temperature is measured in units of the critic's scale,
``max(1, mean |Q_A|)`` (a running average), in the actor's objective and the soft TD target alike.
A sparse 0/1 reward keeps Q below 1, so nothing changes there; a dense reward puts Q in the
hundreds, where a raw temperature of 0.01 is no pull at all: on a near-perfect door-open base
(0.99 success) the noise went 60-130 nats from N(0, I) within 3k env steps and success fell to
0.60. Scaled, one ``--init-alpha`` means the same trade-off of return against leaving the base's
noise whatever the reward's units.

Why the actor's samples: the actor climbs Q_W wherever Q_W is high, and a Q_W fitted only on
N(0, I) noise is extrapolating near the corners of the noise box (a 32-d N(0, I) sample has a
norm of about 5.7, a saturated one 8.5) — exactly where a runaway actor goes. Fitting Q_W where
the actor is keeps its gradient honest, at no extra base calls.

The base policy runs once per gradient step (for w' in the TD target), under ``no_grad``:
no gradient ever flows through it. SB3 SAC's ``critic`` *is* Q_W here, so SB3's actor,
temperature, saving, callbacks and logging are reused as they are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.utils import polyak_update

from dpft.finetune.common.networks import action_critic
from dpft.finetune.common.updates import optimizer_kwargs
from dpft.finetune.dsrl.sac import DSRLSAC


class DSRLNA(DSRLSAC):
    def __init__(
        self,
        *args: Any,
        base=None,
        action_horizon: int = 1,
        chunk_dim: int = 1,
        action_critic_kwargs: dict[str, Any] | None = None,
        distill_policy_noise: bool = True,
        distill_within_weight: float = 0.0,
        noise_prior: bool = True,
        q_scaled_temperature: bool = True,
        **kwargs: Any,
    ) -> None:
        self.noise_prior = noise_prior
        self.q_scaled_temperature, self.q_scale = q_scaled_temperature, 1.0
        self.base, self.action_horizon, self.chunk_dim = base, action_horizon, chunk_dim
        self.distill_policy_noise, self.distill_within_weight = distill_policy_noise, distill_within_weight
        self.action_critic_kwargs = action_critic_kwargs or {}
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        chunk_space = spaces.Box(-np.inf, np.inf, (self.chunk_dim,), np.float32)
        make = lambda: action_critic(self.observation_space, chunk_space, **self.action_critic_kwargs)  # noqa: E731
        self.action_critic, self.action_critic_target = make().to(self.device), make().to(self.device)
        self.action_critic_target.load_state_dict(self.action_critic.state_dict())
        self.action_critic_target.set_training_mode(False)
        self.action_critic.optimizer = torch.optim.Adam(
            self.action_critic.parameters(), lr=self.lr_schedule(1), **optimizer_kwargs(self.device)
        )

    def executed(self, obs_flat: torch.Tensor, scaled_noise: torch.Tensor) -> torch.Tensor:
        """The rows of the base policy's chunk that would run, flattened (no gradient)."""
        base = self.base
        obs = obs_flat.view(-1, base.obs_horizon, base.obs_dim)
        noise = (scaled_noise * float(self.action_space.high[0])).view(-1, *base.noise_shape)
        with torch.no_grad():
            return base.predict_chunk(obs, noise)[:, : self.action_horizon].reshape(obs.shape[0], -1)

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        self.action_critic.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer, self.action_critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)
        m = float(self.action_space.high[0])
        keys = ("critic", "noise_critic", "actor", "ent_coef", "ent_coef_loss", "log_prob")
        logs: dict[str, list[float]] = {k: [] for k in keys}
        for step in range(gradient_steps):
            critics_only = self.in_critic_warmup(step)
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            w_pi, log_prob = self.actor.action_log_prob(data.observations)
            log_prob = self._regulariser(w_pi, log_prob, m)
            logs["log_prob"].append(log_prob.mean().item())
            if critics_only:  # the temperature waits with the actor
                ent_coef = self._current_temperature().detach()
                logs["ent_coef"].append(ent_coef.item())
                ent_coef = ent_coef * self.q_scale
            else:
                ent_coef = self._step_temperature(log_prob, logs) * self.q_scale

            # 1. action critic: soft TD on executed chunks
            with torch.no_grad():
                if critics_only:  # the value of the base's own behaviour: w' ~ N(0, I), no KL to pay
                    w_next = self._base_noise(data.next_observations.shape[0], m)
                    log_prob_next = w_next.new_zeros(w_next.shape[0], 1)
                else:
                    w_next, log_prob_next = self.actor.action_log_prob(data.next_observations)
                    log_prob_next = self._regulariser(w_next, log_prob_next, m)
                a_next = self.executed(data.next_observations, w_next)
                q_next = torch.cat(self.action_critic_target(data.next_observations, a_next), dim=1)
                q_next = q_next.min(dim=1, keepdim=True).values - ent_coef * log_prob_next
                target = data.rewards + (1 - data.dones) * self.gamma * q_next
            q = self.action_critic(data.observations, data.chunks)
            critic_loss = 0.5 * sum(F.mse_loss(qi, target) for qi in q)
            if self.q_scaled_temperature:  # for the next step: the scale the temperature is measured in
                self.q_scale = 0.99 * self.q_scale + 0.01 * max(1.0, q[0].detach().abs().mean().item())
            self._step(self.action_critic.optimizer, critic_loss)

            # 2. noise critic: distil Q_A(s, base(s, w)) onto Q_W(s, w), head by head
            obs, noise, chunks, weight = self._distill_batch(data, m, w_next, a_next)
            with torch.no_grad():
                q_a = torch.cat(self.action_critic(obs, chunks), dim=1)
            err = torch.cat(self.critic(obs, noise), dim=1) - q_a
            noise_loss = (err.pow(2).mean(dim=1) * weight).sum() / weight.sum()
            noise_loss = noise_loss + self.distill_within_weight * self._within_state(err, batch_size)
            self._step(self.critic.optimizer, noise_loss)

            # 3. actor against the noise critic
            q_pi = torch.cat(self.critic(data.observations, w_pi), dim=1).min(dim=1, keepdim=True).values
            actor_loss = (ent_coef * log_prob - q_pi).mean()
            if not critics_only:
                self._step(self.actor.optimizer, actor_loss)

            polyak_update(self.action_critic.parameters(), self.action_critic_target.parameters(), self.tau)
            for key, value in (("critic", critic_loss), ("noise_critic", noise_loss), ("actor", actor_loss)):
                logs[key].append(value.item())
        self._n_updates += gradient_steps
        self.update_actor_ema(gradient_steps)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", float(np.mean(logs["ent_coef"])))
        self.logger.record("train/q_scale", self.q_scale)
        for key in ("critic", "noise_critic", "actor"):
            self.logger.record(f"train/{key}_loss", float(np.mean(logs[key])))
        # the quantity the temperature is tuned on: KL to N(0, I) (noise prior) or entropy
        name, sign = ("train/kl_to_prior", 1.0) if self.noise_prior else ("train/entropy", -1.0)
        self.logger.record(name, sign * float(np.mean(logs["log_prob"])))
        if logs["ent_coef_loss"]:
            self.logger.record("train/ent_coef_loss", float(np.mean(logs["ent_coef_loss"])))

    def _regulariser(self, scaled_noise: torch.Tensor, log_prob: torch.Tensor, m: float) -> torch.Tensor:
        """log π(w|s), or with ``noise_prior`` the one-sample KL estimate log π(w|s) - log N(w; 0, I),
        both as densities over SB3's scaled action u = w / m in [-1, 1]. A policy inside the box
        |w_i| <= m can never equal N(0, I): the smallest reachable KL is about 0.165 nats per
        coordinate at m = 1.5 (about 5.3 for a 32-d noise), so a --target-kl below that only makes
        the temperature grow without end. SB3's tanh correction log(1 - u² + 1e-6) makes log π
        slightly too small where |u| is close to 1, so the KL is underestimated for a noise pinned
        at the box edge (by 0.001 nats per coordinate at |u| = 0.9995, by 0.69 at |u| = 1 - 5e-7);
        the pull back from the very edge is weaker than it should be, never stronger."""
        log_prob = log_prob.reshape(-1, 1)
        if not self.noise_prior:
            return log_prob
        w = scaled_noise * m
        log_prior = -0.5 * w.pow(2) - 0.5 * math.log(2 * math.pi) + math.log(m)  # N(0, 1) density of w, per du
        return log_prob - log_prior.sum(dim=1, keepdim=True)

    def _distill_batch(
        self, data, m: float, w_next: torch.Tensor, a_next: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(obs, noise, executed chunk, weight) rows to distil on: first the M stored N(0, I)
        noises of every sampled state (grouped by state, see ``_within_state``), then the noise
        the agent chose, then (``distill_policy_noise``) the actor's samples at the next states.
        Next states that ended the episode get weight 0: Q_A is never trained there (the TD
        target does not bootstrap from them), so there is nothing true to distil."""
        n_distill = data.distill_noise.shape[1]
        b = data.observations.shape[0]
        obs = [data.observations.repeat_interleave(n_distill, dim=0), data.observations]
        noise = [data.distill_noise.flatten(0, 1) / m, data.actions]
        chunks = [data.distill_chunks.flatten(0, 1), data.chunks]
        weight = [data.observations.new_ones(b * (n_distill + 1))]
        if self.distill_policy_noise:
            obs, noise, chunks = obs + [data.next_observations], noise + [w_next], chunks + [a_next]
            weight.append(1 - data.dones.view(-1))
        return torch.cat(obs), torch.cat(noise), torch.cat(chunks), torch.cat(weight)

    def _within_state(self, err: torch.Tensor, b: int) -> torch.Tensor:
        """Mean squared error of Q_W - Q_A *after removing each state's mean error*, over the M
        N(0, I) noises of each state. Plain MSE is dominated by how Q varies across states; the
        actor only follows how it varies across noises within one state, which is this term."""
        n_distill = self.replay_buffer.distill_samples
        if n_distill < 2 or self.distill_within_weight == 0:
            return err.new_zeros(())
        grouped = err[: b * n_distill].view(b, n_distill, -1)
        return (grouped - grouped.mean(dim=1, keepdim=True)).pow(2).mean()

    def _current_temperature(self) -> torch.Tensor:
        return self.ent_coef_tensor if self.ent_coef_optimizer is None else torch.exp(self.log_ent_coef)

    def _base_noise(self, n: int, m: float) -> torch.Tensor:
        """N(0, I) noise clipped to the bound, as SB3's scaled action (what the warm-up ran)."""
        w = torch.randn(n, *self.action_space.shape, device=self.device).clamp(-m, m)
        return w / m

    def _step_temperature(self, log_prob: torch.Tensor, logs: dict[str, list[float]]) -> torch.Tensor:
        if self.ent_coef_optimizer is None:
            logs["ent_coef"].append(self.ent_coef_tensor.item())
            return self.ent_coef_tensor
        ent_coef = torch.exp(self.log_ent_coef.detach())
        loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
        self._step(self.ent_coef_optimizer, loss)
        logs["ent_coef"].append(ent_coef.item())
        logs["ent_coef_loss"].append(loss.item())
        return ent_coef

    @staticmethod
    def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "base", "action_critic", "action_critic_target"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        return [*state_dicts, "action_critic", "action_critic_target", "action_critic.optimizer"], variables
