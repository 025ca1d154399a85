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

from dpft.base_policies.infra.errors import TaskError
from dpft.base_policies.sb3_actor import SquashedMeanActor
from dpft.envs.experts import register_expert

WEIGHTS = Path(__file__).parent / "weights"


@register_expert("gym")
def sac_expert(name: str, level: str | None = None):
    """``level``: ``expert`` or ``medium`` (D4RL's levels, ``weights/<Env-id>-<level>``, made by
    ``train_locomotion_expert.py --levels``); None: the first short-trained expert."""
    stem = f"{name}-{level}" if level else name
    file, meta_file = WEIGHTS / f"{stem}.safetensors", WEIGHTS / f"{stem}.json"
    if not file.exists():
        available = sorted(p.stem for p in WEIGHTS.glob("*.safetensors"))
        what = f"no {level} SAC policy" if level else "no SAC expert"
        raise TaskError(
            f"{what} for gym:{name} (available: {available}); train one with "
            f"python experiments/train_locomotion_expert.py --task gym:{name}"
            + (" --levels --work DIR" if level else "")
        )
    state, meta = load_file(str(file)), json.loads(meta_file.read_text())
    if "log_std.weight" not in state:  # experts exported before log_std was kept
        out, hid = state["mu.weight"].shape
        state = {**state, "log_std.weight": torch.zeros(out, hid), "log_std.bias": torch.zeros(out)}
    actor = SquashedMeanActor(
        state["latent_pi.0.weight"].shape[1], SquashedMeanActor.hidden_from_state(state), state["mu.weight"].shape[0]
    )
    actor.load_state_dict(state)
    low, high = np.array(meta["action_low"], np.float32), np.array(meta["action_high"], np.float32)

    @torch.no_grad()
    def expert(obs: np.ndarray) -> np.ndarray:
        a = actor(torch.as_tensor(obs, dtype=torch.float32)).numpy()
        return low + (a + 1) * 0.5 * (high - low)

    return expert
