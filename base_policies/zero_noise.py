"""A base policy run at its mode: every chunk denoised from zero initial noise.

A diffusion or flow policy's zero noise is its most likely behaviour; on a mixed-data base it is
often the best one (push-mh: 1.00 with zero noise, 0.47 with N(0, I) noise; ``dpft steerability``
measures both). A residual learned on top of this policy corrects one deterministic behaviour
instead of a spread of them (``dpft finetune residual --base-noise zero``). Where the mode fails
(drawer-open-mh and peg-insert-side-mh's zero noise: 0.00) it is the wrong base, which is why it is
a choice and not the default.

A :class:`~dpft.base_policies.composed.ComposedPolicy` with nothing learned (``type:
"zero-noise"``), so it saves, loads and nests like the steered and residual artifacts. It picks its
own noise (``chooses_noise``): a rollout or a method that runs it as a base passes no noise, and any
noise it is given is ignored.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dpft.base_policies.composed import ComposedPolicy
from dpft.base_policies.policy import Policy, register_policy


@register_policy("zero-noise")
class ZeroNoisePolicy(ComposedPolicy):
    chooses_noise = True

    def __init__(self, base: Policy, learned: nn.Module | None = None, meta: dict[str, Any] | None = None) -> None:
        super().__init__(base, learned if learned is not None else nn.Module(), meta)

    def fields(self) -> dict[str, Any]:
        return {}

    @classmethod
    def build_learned(cls, base: Policy, meta: dict[str, Any]) -> nn.Module:
        return nn.Module()

    @torch.no_grad()
    def predict_chunk(self, obs, noise=None, generator=None):
        obs = self.obs_history(obs)
        zeros = torch.zeros(obs.shape[0], *self.base.noise_shape, device=self.base.device)
        return self.base.predict_chunk(obs, zeros)
