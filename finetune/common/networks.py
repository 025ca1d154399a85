"""SB3 SAC and TD3 networks whose critics can have a LayerNorm after every hidden layer.

LayerNorm in the critic is the cheapest of the stabilisers that keep off-policy value
estimates from blowing up at high update-to-data ratios (Ball et al., 2023, RLPD). SB3's
``create_mlp`` already takes ``post_linear_modules``; its ``ContinuousCritic`` just does not
expose it, so this module rebuilds the Q networks when asked and leaves the rest of SB3 alone.
"""

from __future__ import annotations

from typing import Any

from gymnasium import spaces
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.torch_layers import FlattenExtractor, create_mlp
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import TD3Policy
from torch import nn


class EnsembleCritic(ContinuousCritic):
    """SB3's ensemble of Q networks, optionally with LayerNorm after each hidden linear layer."""

    def __init__(self, *args: Any, layer_norm: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if layer_norm:
            in_dim = kwargs["features_dim"] + get_action_dim(self.action_space)
            net_arch, activation = kwargs["net_arch"], kwargs.get("activation_fn", nn.ReLU)
            for idx in range(self.n_critics):
                net = nn.Sequential(*create_mlp(in_dim, 1, net_arch, activation, post_linear_modules=[nn.LayerNorm]))
                self.add_module(f"qf{idx}", net)  # replaces the plain network of the same name
                self.q_networks[idx] = net


def action_critic(
    observation_space: spaces.Box, action_space: spaces.Box, net_arch: list[int], n_critics: int, layer_norm: bool
) -> EnsembleCritic:
    """A Q(s, a) ensemble over an arbitrary action space (DSRL-NA's action-chunk critic)."""
    extractor = FlattenExtractor(observation_space)
    return EnsembleCritic(
        observation_space,
        action_space,
        net_arch=net_arch,
        features_extractor=extractor,
        features_dim=extractor.features_dim,
        n_critics=n_critics,
        share_features_extractor=False,
        layer_norm=layer_norm,
    )


class LayerNormCritics:
    """Mixin for SB3's SAC/TD3 policies: ``layer_norm=True`` in policy_kwargs gives the critics
    a LayerNorm after every hidden layer (``n_critics`` sets the ensemble size, as in SB3)."""

    def __init__(self, *args: Any, layer_norm: bool = False, **kwargs: Any) -> None:
        self.layer_norm = layer_norm  # read by make_critic during the policy's __init__
        super().__init__(*args, **kwargs)

    def make_critic(self, features_extractor=None) -> EnsembleCritic:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return EnsembleCritic(**critic_kwargs, layer_norm=self.layer_norm).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "layer_norm": self.layer_norm}


class LayerNormSACPolicy(LayerNormCritics, SACPolicy):
    """SB3's SAC policy; critics optionally with LayerNorm."""


class LayerNormTD3Policy(LayerNormCritics, TD3Policy):
    """SB3's TD3 policy; critics optionally with LayerNorm."""
