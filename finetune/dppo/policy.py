"""DPPO's actor-critic: the base's own denoiser as a policy over the chain, and a value function.

DPPO (Ren et al., "Diffusion Policy Policy Optimization") treats each of the last K denoising steps
of a diffusion policy as a Gaussian policy step inside each environment step: the chain
``x_T -> ... -> x_0`` is sampled stochastically, the env executes the chunk ``x_0``, and the
likelihood of every denoising transition is known in closed form, so PPO's clipped ratio applies
per denoising step. Here, for SB3's PPO:

* the **action** is the whole normalised chain ``[x_T, ..., x_0]`` followed by the K
  log-probabilities of its fine-tuned steps at sampling time. The environment
  (:class:`ChainEnv`) executes only ``x_0``; the stored log-probabilities are what the update's
  ratios are measured against, with no second buffer to keep aligned;
* the first ``T - K`` steps run the **frozen** base's deterministic sampler (DPPO fine-tunes the
  last steps, where the sample takes its final shape); the last K are stochastic with the
  trainable copy's step, their std floored at ``min_std`` (in normalised action units) so the
  policy keeps exploring even where the base's own std is tiny;
* the **value function** is an MLP on the observation history.

The artifact is the fine-tuned copy itself: a diffusion or flow policy folder, sampled
deterministically like any base.
"""

from __future__ import annotations

import copy

import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from dpft.base_policies.policy import DenoisingPolicy


class ChainPolicy(ActorCriticPolicy):
    """See the module docstring. ``base_source`` (a folder or ``shipped:NAME``) is loaded here, so
    the policy's constructor arguments are plain values an SB3 checkpoint can store; the weights
    come from the checkpoint on ``--resume``."""

    def __init__(
        self, observation_space, action_space, lr_schedule, base_source: str = "", ft_steps: int = 0,
        min_std: float = 0.1, noise_level: float | None = None, value_arch: tuple[int, ...] = (256, 256),
        critic_lr_scale: float = 10.0, **kwargs,
    ) -> None:  # fmt: skip
        self.base_source, self.min_std, self.noise_level = base_source, float(min_std), noise_level
        self.requested_ft_steps, self.value_arch, self.critic_lr_scale = ft_steps, tuple(value_arch), critic_lr_scale
        kwargs["ortho_init"] = False  # the denoiser keeps the base's weights
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build(self, lr_schedule) -> None:
        from dpft.base_policies.checkpoint import load_policy

        actor = load_policy(self.base_source)
        if not isinstance(actor, DenoisingPolicy):
            raise TypeError(f"{self.base_source} is not a diffusion or flow policy")
        self.actor: DenoisingPolicy = actor.requires_grad_(False).eval()
        self.actor.denoiser.requires_grad_(True)  # only the denoiser learns; normalisers stay the base's
        self.frozen: DenoisingPolicy = copy.deepcopy(actor).requires_grad_(False)
        steps = len(actor.timesteps)
        self.ft_steps = steps if self.requested_ft_steps in (0, None) else min(self.requested_ft_steps, steps)
        layers: list[nn.Module] = []
        width = self.features_dim
        for h in self.value_arch:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.value_net = nn.Sequential(*layers, nn.Linear(width, 1))
        lr = lr_schedule(1)
        self.optimizer = self.optimizer_class(
            [
                {"params": list(self.actor.denoiser.parameters()), "lr": lr},
                {"params": list(self.value_net.parameters()), "lr": lr * self.critic_lr_scale},
            ],
            **self.optimizer_kwargs,
        )

    def _get_constructor_parameters(self) -> dict:
        data = super()._get_constructor_parameters()
        data.update(
            base_source=self.base_source,
            ft_steps=self.requested_ft_steps,
            min_std=self.min_std,
            noise_level=self.noise_level,
            value_arch=self.value_arch,
            critic_lr_scale=self.critic_lr_scale,
        )
        return data

    # ----- the chain ------------------------------------------------------------------
    @property
    def first_ft(self) -> int:
        """Index of the first fine-tuned denoising step."""
        return len(self.actor.timesteps) - self.ft_steps

    def history(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.reshape(obs.shape[0], self.actor.obs_horizon, self.actor.obs_dim)

    def _mean_std(
        self, cond: torch.Tensor, x: torch.Tensor, t: torch.Tensor, model: DenoisingPolicy | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.actor if model is None else model
        level = model.default_noise_level if self.noise_level is None else self.noise_level
        mean, std = model.step_mean_std(cond, x, t, level)
        return mean, std.expand_as(mean).clamp_min(self.min_std)

    @torch.no_grad()
    def sample_chain(
        self, obs: torch.Tensor, model: DenoisingPolicy | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(chain ``[B, T+1, H, A]``, log-probabilities of the fine-tuned steps ``[B, K]``) from the
        fine-tuned copy, or with ``model=self.frozen`` from the base (the BC regulariser's chains)."""
        model = self.actor if model is None else model
        hist = self.history(obs)
        cond = model.condition(hist)
        x = torch.randn(obs.shape[0], *self.actor.noise_shape, device=obs.device)
        chain, log_probs = [x], []
        for k, t in enumerate(self.actor.timesteps):
            tt = t.expand(x.shape[0])
            if k < self.first_ft:
                x = self.frozen.step(cond, x, tt)  # the base's own deterministic step
            else:
                mean, std = self._mean_std(cond, x, tt, model)
                x = mean + std * torch.randn_like(mean)
                log_probs.append(DenoisingPolicy.gaussian_log_prob(x, mean, std))
            chain.append(x)
        return torch.stack(chain, 1), torch.stack(log_probs, 1)

    def bc_loss(self, obs: torch.Tensor) -> torch.Tensor:
        """DPPO's optional behaviour-cloning regulariser: the negative log-likelihood, under the
        fine-tuned steps, of chains the frozen base samples on the same observations (the base
        as teacher along the states the current policy visits), per action dimension so the
        weight does not depend on the chunk's size."""
        chain, _ = self.sample_chain(obs, self.frozen)
        return -self.step_log_probs(obs, chain).mean() / chain[0, 0].numel()

    def step_log_probs(self, obs: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[B, K]`` of the fine-tuned steps of ``chain`` under the current
        weights (with gradients; all K steps in one batch)."""
        b, k, s = chain.shape[0], self.ft_steps, self.first_ft
        cond = self.actor.condition(self.history(obs)).repeat_interleave(k, 0)
        x, x_next = chain[:, s:-1].flatten(0, 1), chain[:, s + 1 :].flatten(0, 1)
        mean, std = self._mean_std(cond, x, self.actor.timesteps[s:].repeat(b))
        return DenoisingPolicy.gaussian_log_prob(x_next, mean, std).view(b, k)

    def split(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An action row -> (chain ``[B, T+1, H, A]``, stored log-probabilities ``[B, K]``)."""
        chain = actions[:, : -self.ft_steps].reshape(actions.shape[0], -1, *self.actor.noise_shape)
        return chain, actions[:, -self.ft_steps :]

    # ----- SB3's interface --------------------------------------------------------------
    def forward(self, obs: torch.Tensor, deterministic: bool = False):
        chain, log_probs = self.sample_chain(obs)
        actions = torch.cat([chain.flatten(1), log_probs], 1)
        return actions, self.predict_values(obs), log_probs.sum(1)

    def predict_values(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value_net(obs.flatten(1))

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor):
        chain, _ = self.split(actions)
        return self.predict_values(obs), self.step_log_probs(obs, chain).sum(1), None

    def _predict(self, observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self.forward(observation)[0]


def action_size(policy: DenoisingPolicy, ft_steps: int) -> int:
    """Length of a DPPO action row: the chain's ``T + 1`` states, then the K log-probabilities."""
    steps = len(policy.timesteps)
    k = steps if ft_steps in (0, None) else min(ft_steps, steps)
    return (steps + 1) * policy.pred_horizon * policy.action_dim + k
