"""FIND's noise policy: a tanh-squashed Gaussian over the base's initial noise, for SB3's PPO.

FIND (fine-tuning the initial noise distribution with policy optimisation) treats the choice of a
diffusion model's initial noise as the action of a policy and improves that distribution with a
clipped policy-gradient objective, the denoiser untouched. Here the noise of each chunk is one
decision of the task's MDP (as in DSRL), so the policy is SB3's PPO actor-critic with two changes:

* **the distribution starts at the base's own.** The noise is ``w = m * tanh(v)`` with
  ``v ~ N(mu(s), sigma)``; ``mu`` starts at 0 (the output layer is scaled down, as PPO's
  orthogonal initialisation does) and ``sigma`` at ``1 / m``, so the first samples are close to
  the N(0, I) noise the base was trained with (``m = 2.5``: within a few per cent in the bulk),
  and the deterministic policy (``w = m * tanh(mu(s))``) is the base with zero noise;
* **the output is squashed** (``SquashedDiagGaussianDistribution``), so every sample is a noise the
  base can denoise and the learned part is the same :class:`SquashedMeanActor` a DSRL artifact
  ships: a FIND policy is a steered policy (``type: dsrl``, ``variant: find``) that ``dpft eval``
  and everything else reads unchanged.

PPO's ratio uses the log-probability of the squashed sample under the new and the old policy;
the tanh Jacobian is the same for both and cancels, so the ratio is that of the Gaussians.
"""

from __future__ import annotations

import math

import torch
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import get_action_dim
from torch import nn

from dpft.base_policies.sb3_actor import SquashedMeanActor


class SquashedNoisePolicy(ActorCriticPolicy):
    """SB3's actor-critic with a squashed Gaussian head (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("activation_fn", nn.ReLU)  # what a SquashedMeanActor computes
        super().__init__(*args, **kwargs)
        # SB3 then maps the [-1, 1] samples onto the noise box instead of clipping them (its
        # constructor allows squashing only with gSDE, whose noise a squashed head does not need)
        self._squash_output = True

    def _build(self, lr_schedule) -> None:
        self.action_dist = SquashedDiagGaussianDistribution(get_action_dim(self.action_space))
        super()._build(lr_schedule)


def initial_log_std(action_magnitude: float) -> float:
    """``log(1 / m)``: ``m * tanh(v)`` with ``v ~ N(0, 1/m^2)`` is close to N(0, 1) in the bulk."""
    return -math.log(action_magnitude)


def actor_from_ppo(policy: SquashedNoisePolicy) -> SquashedMeanActor:
    """The deterministic noise policy as a :class:`SquashedMeanActor` (the DSRL artifact's learned
    part): ``latent_pi`` from the policy network, ``mu`` from the action head, and the state-free
    ``log_std`` as a head with zero weights (``tanh(mu + std * eps)`` given a noise)."""
    linears = [m for m in policy.mlp_extractor.policy_net if isinstance(m, nn.Linear)]
    actor = SquashedMeanActor(linears[0].in_features, [m.out_features for m in linears], policy.action_net.out_features)
    actor.latent_pi.load_state_dict(policy.mlp_extractor.policy_net.state_dict())
    actor.mu.load_state_dict(policy.action_net.state_dict())
    with torch.no_grad():
        actor.log_std.weight.zero_()
        actor.log_std.bias.copy_(policy.log_std.detach())
    return actor
