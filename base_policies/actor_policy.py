"""A plain deterministic actor as a :class:`Policy` (horizons of 1): what SAC from scratch
produces, so its result is evaluated by the same ``dpft eval`` as every other policy.

Folder (``type: "actor"``): config.json with ``obs_dim``, ``action_dim``, ``hidden``,
``action_low``, ``action_high``, ``task``; model.safetensors with the actor's weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dpft.base_policies.infra.errors import CheckpointError
from dpft.base_policies.infra.state_io import atomic_dir
from dpft.base_policies.policy import FORMAT_VERSION, Policy, register_policy
from dpft.base_policies.sb3_actor import SquashedMeanActor
from dpft.base_policies.weights import load_weights


@register_policy("actor")
class ActorPolicy(Policy):
    """``tanh`` actor mean, scaled to the action bounds; the noise is ignored (deterministic)."""

    obs_horizon = pred_horizon = action_horizon = 1

    def __init__(self, actor: SquashedMeanActor, action_low, action_high, meta: dict[str, Any]) -> None:
        super().__init__()
        self.actor = actor.eval()
        self.meta = dict(meta)
        self.obs_dim, self.action_dim = actor.latent_pi[0].in_features, actor.mu.out_features
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32), persistent=False)
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32), persistent=False)
        self.config = type("TaskOnly", (), {"task": meta.get("task")})()

    @torch.no_grad()
    def predict_chunk(self, obs, noise=None, generator=None) -> torch.Tensor:
        obs = self.obs_history(obs)[:, -1]
        a = self.actor(obs)
        return (self.action_low + (a + 1) * 0.5 * (self.action_high - self.action_low)).unsqueeze(1)

    def save(self, path: Path) -> None:
        meta = {
            **self.meta,
            "type": "actor",
            "format_version": FORMAT_VERSION,
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "hidden": self.actor.hidden,
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.actor.state_dict().items()}
        with atomic_dir(Path(path)) as tmp:
            (tmp / "config.json").write_text(json.dumps(meta, indent=2))
            save_file(state, str(tmp / "model.safetensors"))

    @classmethod
    def from_folder(cls, path: Path, meta: dict[str, Any]) -> ActorPolicy:
        missing = [k for k in ("obs_dim", "action_dim", "hidden", "action_low", "action_high") if k not in meta]
        if missing:
            raise CheckpointError(f"{path / 'config.json'} lacks {missing}; re-export the actor")
        actor = SquashedMeanActor(int(meta["obs_dim"]), list(meta["hidden"]), int(meta["action_dim"]))
        load_weights(actor, path)
        return cls(actor, meta["action_low"], meta["action_high"], meta)
