"""The residual-policy artifact: a frozen base plus a learned, bounded correction.

Two forms share one network (:class:`ResidualNet`) and one correction rule::

    executed = clip(a_base + scale * r * half_range, low, high),   r = net(obs history, a_base) in [-1, 1]

* ``step`` (ResiP, ResFiT): the base's chunk is executed one action at a time and the residual
  corrects every action from the observation at that step. The policy therefore reports
  ``pred_horizon = action_horizon = 1`` and keeps, per batch row, the base chunk it is executing
  and its position in it (see :meth:`dpft.base_policies.policy.Policy.reset`).
* ``chunk`` (Policy Decorator): the residual sees the chunk-start observation and the executed
  rows of the base chunk and corrects them all at once; the policy is stateless.

The net's last layer starts at zero, so a fresh residual is the base, bit for bit.
The base's noise is N(0, I) unless the base picks its own (``Policy.chooses_noise``: a DSRL
policy), which is how a residual on top of a steered policy keeps the steering.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dpft.base_policies.composed import ComposedPolicy
from dpft.base_policies.infra.errors import CheckpointError
from dpft.base_policies.policy import Policy, register_policy

FORMS = ("step", "chunk")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class Features(nn.Module):
    """What the residual sees: the normalised observation history and the base action(s)
    scaled to [-1, 1] by the action bounds. The statistics are buffers, saved with the net."""

    def __init__(self, obs_mean: torch.Tensor, obs_std: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("obs_mean", obs_mean.float().clone())
        self.register_buffer("obs_std", obs_std.float().clone())
        self.register_buffer("low", low.float().clone())
        self.register_buffer("high", high.float().clone())

    @classmethod
    def for_base(cls, base: Policy, low: torch.Tensor, high: torch.Tensor) -> Features:
        """Observation statistics from the base's own normaliser (found through a steered
        policy's base), or the identity for a base without one."""
        inner = base
        while not hasattr(inner, "obs_normalizer") and hasattr(inner, "base"):
            inner = inner.base
        norm = getattr(inner, "obs_normalizer", None)
        if norm is None:
            mean, std = torch.zeros(base.obs_dim), torch.ones(base.obs_dim)
        else:
            mean, std = norm.shift.detach().cpu(), norm.scale.detach().cpu()
        return cls(mean, std, low, high)

    @property
    def center(self) -> torch.Tensor:
        return (self.high + self.low) / 2

    @property
    def half_range(self) -> torch.Tensor:
        return (self.high - self.low) / 2

    def forward(self, obs_hist: torch.Tensor, base_actions: torch.Tensor) -> torch.Tensor:
        """``[B, To, D]`` and ``[B, h, A]`` -> ``[B, To * D + h * A]``."""
        obs = ((obs_hist - self.obs_mean) / self.obs_std).flatten(1)
        acts = ((base_actions - self.center) / self.half_range).flatten(1)
        return torch.cat([obs, acts], dim=1)

    def correct(self, base_actions: torch.Tensor, r: torch.Tensor, scale: float) -> torch.Tensor:
        """``clip(a_base + scale * r * half_range)``; with ``r = 0`` exactly ``a_base`` (in bounds)."""
        out = base_actions + scale * r.view_as(base_actions) * self.half_range
        return torch.maximum(torch.minimum(out, self.high), self.low)


class ResidualNet(nn.Module):
    """``features -> MLP -> head -> tanh`` (SAC, TD3) or ``clip`` (PPO's Gaussian mean) in [-1, 1]."""

    def __init__(
        self, features: Features, in_dim: int, hidden: list[int], out_dim: int, activation: str, output: str
    ) -> None:
        super().__init__()
        self.features = features
        self.hidden, self.activation, self.output = list(hidden), activation, output
        dims, layers = [in_dim, *hidden], []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(dims[-1], out_dim)
        nn.init.zeros_(self.head.weight)  # a fresh residual is the base
        nn.init.zeros_(self.head.bias)

    def forward(self, obs_hist: torch.Tensor, base_actions: torch.Tensor) -> torch.Tensor:
        u = self.head(self.mlp(self.features(obs_hist, base_actions)))
        return torch.tanh(u) if self.output == "tanh" else u.clamp(-1.0, 1.0)


@register_policy("residual")
class ResidualPolicy(ComposedPolicy):
    """A :class:`Policy` whose chunks are the base's, corrected by the residual (see module doc)."""

    def __init__(self, base: Policy, net: ResidualNet, meta: dict[str, Any]) -> None:
        super().__init__(base, net, meta)
        self.form = str(meta["form"])
        self.scale = float(meta["scale"])
        if self.form == "step":
            self.pred_horizon = self.action_horizon = 1  # one corrected action per call
        self._chunks: torch.Tensor | None = None  # step form: [B, k, A] base chunk being executed
        self._pos: torch.Tensor | None = None  # [B] index of the next action in it
        self._fresh: torch.Tensor | None = None  # [B] rows whose episode just started

    @property
    def net(self) -> ResidualNet:
        return self.learned

    def fields(self) -> dict[str, Any]:
        n = self.net
        return {
            "form": self.form,
            "scale": self.scale,
            "hidden": n.hidden,
            "activation": n.activation,
            "output": n.output,
        }

    @classmethod
    def build_learned(cls, base: Policy, meta: dict[str, Any]) -> ResidualNet:
        missing = [k for k in ("form", "scale", "hidden", "activation", "output") if k not in meta]
        if missing or meta["form"] not in FORMS or meta["activation"] not in ACTIVATIONS:
            raise CheckpointError(
                f"a residual policy's config.json needs form {FORMS}, scale, hidden, activation "
                f"{sorted(ACTIVATIONS)} and output; missing or invalid: {missing or [meta.get('form')]}"
            )
        h = 1 if meta["form"] == "step" else base.action_horizon
        d = base.action_dim
        nan = torch.full((d,), float("nan"))
        features = Features(torch.zeros(base.obs_dim), torch.ones(base.obs_dim), nan, nan)  # loaded from the file
        in_dim = base.obs_horizon * base.obs_dim + h * d
        return ResidualNet(features, in_dim, list(meta["hidden"]), h * d, meta["activation"], meta["output"])

    @property
    def stateful(self) -> bool:
        return self.form == "step"

    @property
    def chooses_noise(self) -> bool:  # a residual on a steered base keeps the base's steering
        return self.base.chooses_noise

    def reset(self, done: torch.Tensor | None = None) -> None:
        if done is None or self._fresh is None or len(done) != len(self._fresh):
            self._chunks = self._pos = self._fresh = None
        else:
            self._fresh |= torch.as_tensor(done, dtype=torch.bool, device=self._fresh.device)

    def _base_chunk(self, obs: torch.Tensor, noise: torch.Tensor | None, generator) -> torch.Tensor:
        return self.base.predict_chunk(obs, noise, generator=generator)[:, : self.base.action_horizon]

    @torch.no_grad()
    def predict_chunk(self, obs, noise=None, generator=None):
        obs = self.obs_history(obs)
        B = obs.shape[0]
        if noise is not None:
            noise = self.check_noise(torch.as_tensor(noise), B)
        if self.form == "chunk":
            chunk = self.base.predict_chunk(obs, noise, generator=generator)
            k = self.base.action_horizon
            out = chunk.clone()
            out[:, :k] = self.net.features.correct(chunk[:, :k], self.net(obs, chunk[:, :k]), self.scale)
            return out
        if self._fresh is None or len(self._fresh) != B:
            k, d = self.base.action_horizon, self.action_dim
            self._chunks = torch.zeros(B, k, d, device=obs.device)
            self._pos = torch.zeros(B, dtype=torch.long, device=obs.device)
            self._fresh = torch.ones(B, dtype=torch.bool, device=obs.device)
        need = self._fresh | (self._pos >= self._chunks.shape[1])
        if need.any():  # one base call for every row that starts a chunk
            rows = need.nonzero().squeeze(1)
            self._chunks[rows] = self._base_chunk(obs[rows], None if noise is None else noise[rows], generator)
            self._pos[rows] = 0
            self._fresh[rows] = False
        a_base = self._chunks[torch.arange(B, device=obs.device), self._pos][:, None]  # [B, 1, A]
        self._pos += 1
        return self.net.features.correct(a_base, self.net(obs, a_base), self.scale)
