"""(observation history -> action chunk) training windows.

For every step ``t`` of every episode (see the timing diagram in ``base_policies.config``)::

    obs window     = obs[t - obs_horizon + 1 .. t]        (indices < 0 repeat obs[0])
    action chunk   = actions[t .. t + pred_horizon - 1]   (indices >= T repeat actions[T-1])

Padding at the episode start matches the environment wrapper's history padding at reset;
repeating the last action teaches the policy to hold still once a demo ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dpft.base_policies.data.episodes import Episode


@dataclass
class Windows:
    obs: torch.Tensor  # [N, obs_horizon, obs_dim]
    actions: torch.Tensor  # [N, pred_horizon, action_dim]

    def __len__(self) -> int:
        return len(self.actions)


def make_windows(episodes: Sequence[Episode], obs_horizon: int, pred_horizon: int) -> Windows:
    obs_out, act_out = [], []
    for ep in episodes:
        T = len(ep)
        t = np.arange(T)
        obs_idx = np.clip(t[:, None] + np.arange(-obs_horizon + 1, 1)[None], 0, T - 1)
        act_idx = np.clip(t[:, None] + np.arange(pred_horizon)[None], 0, T - 1)
        obs_out.append(ep.obs[obs_idx])
        act_out.append(ep.actions[act_idx])
    return Windows(torch.from_numpy(np.concatenate(obs_out)), torch.from_numpy(np.concatenate(act_out)))


def split_episodes(episodes: Sequence[Episode], val_fraction: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """Hold out whole episodes (not windows) so validation windows never overlap training."""
    n_val = int(round(len(episodes) * val_fraction))
    if val_fraction > 0 and len(episodes) >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, len(episodes) - 1)
    order = np.random.default_rng(seed).permutation(len(episodes))
    val = {int(i) for i in order[:n_val]}
    return [e for i, e in enumerate(episodes) if i not in val], [e for i, e in enumerate(episodes) if i in val]
