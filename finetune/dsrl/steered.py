"""The steered-policy artifact: a frozen base policy plus a learned noise policy.

A :class:`~dpft.base_policies.composed.ComposedPolicy` of ``type: "dsrl"``; its learned part is
the noise actor, and config.json adds ``action_magnitude``, the actor's ``hidden`` sizes,
``variant`` and ``task``.

It is a :class:`Policy`. Given ``noise``, ``predict_chunk(obs, noise)`` denoises the actor's
reparameterised sample ``tanh(mu + std * noise)``, so the output is a deterministic function of
(obs, noise) and a steered policy can itself be steered again. Without ``noise`` it depends on
``noise_mode`` in config.json:

* ``sampled``: a fresh N(0, I) draw (from ``generator``) becomes such a sample, i.e. the policy
  acts with the noise distribution it was trained and explored with;
* ``mean`` (artifacts from before the key): the actor's mean noise, ``tanh(mu)``.

Why the two differ more than an action-space actor's mean and samples do: the actor is held
near N(0, I) (a KL budget of several nats over 32 coordinates), so its samples lie on a shell of
norm about 4-5 while its mean lies near the origin, where the base's zero-noise mode is, a
different behaviour (window-open's base: 0.95 with N(0, I) noise, 0.00 with zero noise). Early in
training the mean can be that mode rather than the behaviour the samples show (window-open at 10k
env steps: the mean 0.00, the samples 1.00); on sweep-into the two fell together, and at the end of
a run the mean usually scores more (experiments/results/defaults.md, noise_modes.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dpft.base_policies.composed import ComposedPolicy
from dpft.base_policies.infra.errors import CheckpointError
from dpft.base_policies.policy import Policy, register_policy
from dpft.base_policies.sb3_actor import SquashedMeanActor


@register_policy("dsrl")
class SteeredPolicy(ComposedPolicy):
    NOISE_MODES = ("sampled", "mean")

    def __init__(self, base: Policy, actor: SquashedMeanActor, meta: dict[str, Any]) -> None:
        super().__init__(base, actor, meta)
        self.action_magnitude = float(meta["action_magnitude"])
        self.noise_mode = str(meta.get("noise_mode", "mean"))
        if self.noise_mode not in self.NOISE_MODES:
            raise CheckpointError(
                f"a dsrl policy's 'noise_mode' must be one of {list(self.NOISE_MODES)}, not {self.noise_mode!r}"
            )

    @property
    def chooses_noise(self) -> bool:
        """With ``mean`` the policy picks its own noise; with ``sampled`` a rollout feeds it N(0, I)
        draws, which it turns into samples of its noise distribution (seeded like a base's)."""
        return self.noise_mode == "mean"

    @property
    def actor(self) -> SquashedMeanActor:
        return self.learned

    def fields(self) -> dict[str, Any]:
        return {"action_magnitude": self.action_magnitude, "hidden": self.actor.hidden, "noise_mode": self.noise_mode}

    @classmethod
    def build_learned(cls, base: Policy, meta: dict[str, Any]) -> SquashedMeanActor:
        hidden = meta.get("hidden")
        if not isinstance(hidden, list) or "action_magnitude" not in meta:
            raise CheckpointError(
                "a dsrl policy's config.json needs the noise actor's 'hidden' sizes and 'action_magnitude'"
            )
        return SquashedMeanActor(base.obs_horizon * base.obs_dim, hidden, math.prod(base.noise_shape))

    @torch.no_grad()
    def noise_for(self, obs: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        flat = self.obs_history(obs).flatten(1)
        eps = None if eps is None else eps.reshape(flat.shape[0], -1)
        return (self.action_magnitude * self.actor(flat, eps)).view(-1, *self.noise_shape)

    @torch.no_grad()
    def predict_chunk(self, obs, noise=None, generator=None):
        obs = self.obs_history(obs)  # [B, obs_horizon, obs_dim] on the policy's device
        if noise is not None:
            noise = self.check_noise(torch.as_tensor(noise), obs.shape[0])
        elif self.noise_mode == "sampled":
            noise = self.initial_noise(obs.shape[0], generator)
        return self.base.predict_chunk(obs, self.noise_for(obs, noise))
