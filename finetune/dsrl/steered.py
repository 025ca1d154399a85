"""The steered-policy artifact: a frozen base policy plus a learned noise policy.

Folder layout (``type: "dsrl"``)::

    config.json          type, format_version, action_magnitude, hidden sizes, variant, task
    model.safetensors    the noise actor's weights
    base/                a full copy of the base policy folder (self-contained, never mixed up)

It is a :class:`Policy`: ``predict_chunk(obs)`` runs the noise actor's mean and denoises that
noise with the base; given ``noise``, the actor's reparameterised sample
``tanh(mu + std * noise)`` is used instead, so the output is still a deterministic function
of (obs, noise) and a steered policy can itself be steered again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dpft.base_policies.checkpoint import load_policy, load_weights
from dpft.base_policies.errors import CheckpointError
from dpft.base_policies.policy import FORMAT_VERSION, Policy, register_policy
from dpft.base_policies.state_io import atomic_dir
from dpft.base_policies.sb3_actor import SquashedMeanActor


@register_policy("dsrl")
class SteeredPolicy(Policy):
    def __init__(self, base: Policy, actor: SquashedMeanActor, action_magnitude: float, meta: dict[str, Any]) -> None:
        super().__init__()
        self.base, self.actor = base.eval().requires_grad_(False), actor.eval()
        self.action_magnitude = action_magnitude
        self.meta = meta
        for name in ("obs_dim", "action_dim", "obs_horizon", "pred_horizon", "action_horizon"):
            setattr(self, name, getattr(base, name))
        self.config = getattr(base, "config", None)

    @torch.no_grad()
    def noise_for(self, obs: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        flat = self.obs_history(obs).flatten(1)
        eps = None if eps is None else eps.reshape(flat.shape[0], -1)
        return (self.action_magnitude * self.actor(flat, eps)).view(-1, *self.noise_shape)

    @torch.no_grad()
    def predict_chunk(self, obs, noise=None, generator=None):
        obs = torch.as_tensor(obs, dtype=torch.float32)
        if noise is not None:
            noise = self.check_noise(torch.as_tensor(noise), obs.shape[0])
        return self.base.predict_chunk(obs, self.noise_for(obs, noise))

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        meta = {
            **self.meta,
            "type": "dsrl",
            "format_version": FORMAT_VERSION,
            "action_magnitude": self.action_magnitude,
        }
        with atomic_dir(Path(path)) as tmp:
            self.base.save(tmp / "base")
            (tmp / "config.json").write_text(json.dumps(meta, indent=2))
            save_file({k: v.contiguous() for k, v in self.actor.state_dict().items()}, str(tmp / "model.safetensors"))

    @classmethod
    def from_folder(cls, path: Path, meta: dict[str, Any]) -> SteeredPolicy:
        if not (path / "base").exists():
            raise CheckpointError(f"{path} is a steered policy without its base/ folder; re-export it")
        base = load_policy(path / "base")
        hidden = meta.get("hidden")
        if not isinstance(hidden, list):
            raise CheckpointError(f"{path / 'config.json'} lacks the noise actor's 'hidden' sizes")
        n = base.pred_horizon * base.action_dim
        actor = SquashedMeanActor(base.obs_horizon * base.obs_dim, hidden, n)
        load_weights(actor, path)
        return cls(base, actor, float(meta["action_magnitude"]), meta)
