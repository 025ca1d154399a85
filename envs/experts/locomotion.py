"""SAC actors for locomotion, exported from stable-baselines3 to safetensors.

The actor is SB3's ``latent_pi`` MLP (ReLU) followed by ``mu`` and ``tanh``, rescaled to the
action bounds; the expert uses the mean action.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from base_policies.errors import TaskError
from envs.experts import register_expert

WEIGHTS = Path(__file__).parent / "weights"


@register_expert("gym")
def sac_expert(name: str):
    file, meta_file = WEIGHTS / f"{name}.safetensors", WEIGHTS / f"{name}.json"
    if not file.exists():
        available = sorted(p.stem for p in WEIGHTS.glob("*.safetensors"))
        raise TaskError(
            f"no SAC expert for gym:{name} (available: {available}); train one with "
            f"python experiments/train_locomotion_expert.py --task gym:{name}"
        )
    state, meta = load_file(str(file)), json.loads(meta_file.read_text())
    obs_dim = state["latent_pi.0.weight"].shape[1]
    layers: list[nn.Module] = []
    dims = [obs_dim, *meta["hidden"]]
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    latent = nn.Sequential(*layers)
    latent.load_state_dict({k.removeprefix("latent_pi."): v for k, v in state.items() if k.startswith("latent_pi.")})
    mu = nn.Linear(dims[-1], state["mu.weight"].shape[0])
    mu.load_state_dict({"weight": state["mu.weight"], "bias": state["mu.bias"]})
    low, high = np.array(meta["action_low"], np.float32), np.array(meta["action_high"], np.float32)

    @torch.no_grad()
    def expert(obs: np.ndarray) -> np.ndarray:
        a = torch.tanh(mu(latent(torch.as_tensor(obs, dtype=torch.float32)))).numpy()
        return low + (a + 1) * 0.5 * (high - low)

    return expert
