"""The steered-policy artifact: a frozen base policy plus a learned noise policy.

A :class:`~dpft.base_policies.composed.ComposedPolicy` of ``type: "dsrl"``; its learned part is
the noise actor, and config.json adds ``action_magnitude``, the actor's ``hidden`` sizes,
``variant`` and ``task``.

It is a :class:`Policy`: ``predict_chunk(obs)`` runs the noise actor's mean and denoises that
noise with the base; given ``noise``, the actor's reparameterised sample
``tanh(mu + std * noise)`` is used instead, so the output is still a deterministic function
of (obs, noise) and a steered policy can itself be steered again.
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
    chooses_noise = True  # predict_chunk(obs) uses the actor's mean noise, not a fresh N(0, I) draw

    def __init__(self, base: Policy, actor: SquashedMeanActor, meta: dict[str, Any]) -> None:
        super().__init__(base, actor, meta)
        self.action_magnitude = float(meta["action_magnitude"])

    @property
    def actor(self) -> SquashedMeanActor:
        return self.learned

    def fields(self) -> dict[str, Any]:
        return {"action_magnitude": self.action_magnitude, "hidden": self.actor.hidden}

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
        return self.base.predict_chunk(obs, self.noise_for(obs, noise))
