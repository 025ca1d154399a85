"""SB3 SAC actors outside SB3: rebuild ``latent_pi -> mu (-> tanh)`` from a plain state dict.

Used to ship SAC actors as safetensors (locomotion experts, DSRL noise policies), so loading
them never unpickles SB3's zip files.
"""

from __future__ import annotations

import torch
from torch import nn


class SquashedMeanActor(nn.Module):
    """SB3's squashed-Gaussian actor without the sampling: ``tanh(mu(latent(obs)))`` in [-1, 1],
    plus ``log_std`` for callers that want the reparameterised sample ``tanh(mu + std * eps)``."""

    def __init__(self, obs_dim: int, hidden: list[int], out_dim: int) -> None:
        super().__init__()
        self.hidden = list(hidden)
        layers: list[nn.Module] = []
        dims = [obs_dim, *hidden]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.latent_pi = nn.Sequential(*layers)
        self.mu = nn.Linear(dims[-1], out_dim)
        self.log_std = nn.Linear(dims[-1], out_dim)

    def forward(self, obs: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        h = self.latent_pi(obs)
        u = self.mu(h)
        if eps is not None:
            u = u + self.log_std(h).clamp(-20, 2).exp() * eps
        return torch.tanh(u)

    @classmethod
    def from_sb3(cls, actor: nn.Module) -> SquashedMeanActor:
        """Copy the weights of an SB3 ``sac.policies.Actor``."""
        lin = [m for m in actor.latent_pi if isinstance(m, nn.Linear)]
        new = cls(lin[0].in_features, [m.out_features for m in lin], actor.mu.out_features)
        new.latent_pi.load_state_dict(actor.latent_pi.state_dict())
        new.mu.load_state_dict(actor.mu.state_dict())
        new.log_std.load_state_dict(actor.log_std.state_dict())
        return new

    @staticmethod
    def hidden_from_state(state: dict[str, torch.Tensor]) -> list[int]:
        keys = sorted(
            (k for k in state if k.startswith("latent_pi.") and k.endswith(".weight")),
            key=lambda k: int(k.split(".")[1]),
        )
        return [state[k].shape[0] for k in keys]
