"""How far apart a base policy's actions are across initial noises, at one observation.

Two users: ``dpft steerability`` reports it (is there room for noise steering?), and a residual
run sizes its correction with it. A residual's scale is a share of half the action range; the
benchmark's fixed 0.1 clipped 80% of the corrections that would have turned the mixed-data push
and pick-place bases into their demonstrators (experiments/results/residual_bench.md), while the
base's own spread across noises there is 0.29-0.30. The spread is what the base already considers
plausible at a state, so a correction of that size can reach any of the base's modes and a bit
beyond, without handing the residual the whole action range on its first, random steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from dpft.base_policies.policy import Policy
from dpft.envs.config import EnvConfig
from dpft.finetune.common.rollout import policy_chunk_fn, run_episodes

SPREAD_SEED = 3_000_000
"""Reset seed of the first episode a run measures the spread on: the same for every run seed (so
seeds differ only in their own randomness) and no training or evaluation start state."""
SPREAD_STATES = 5
"""Zero-noise episodes a run measures the spread on (a few seconds on Meta-World and Hopper)."""
SCALE_RANGE = (0.05, 1.0)
"""A measured residual scale is clamped to this share of half the action range: below 0.05 a
near-deterministic base would leave the residual no room; above 1 is beyond the action range."""


@dataclass(frozen=True)
class Spread:
    """Env action units, along zero-noise episodes."""

    within: np.ndarray
    """Per action coordinate: the std of the executed chunk across N(0, I) noises at one
    observation, mean over the chunk's steps and the episodes' decisions."""
    across: float
    """The std of the zero-noise chunk across observations, mean over coordinates."""
    half_range: np.ndarray
    """Half the task's action range, per coordinate."""


@torch.no_grad()
def chunk_spread(policy: Policy, cfg: EnvConfig, states: int, noises: int = 32) -> Spread:
    """The spread of ``policy``'s chunks along ``states`` zero-noise episodes (reset seeds
    ``cfg.seed``, ``cfg.seed + 1``, ...), ``noises`` N(0, I) noises at each decision."""
    zero = policy_chunk_fn(policy, zero_noise=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    k = policy.action_horizon

    def probe(obs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n = len(obs)
        noise = policy.initial_noise(n * noises, gen)
        x = torch.from_numpy(obs).to(policy.device).repeat_interleave(noises, 0)
        chunks = policy.predict_chunk(x, noise)[:, :k].unflatten(0, (n, noises))
        spread = chunks.std(dim=1).mean(dim=1)  # [n, A]: std across noises, mean over the chunk's steps
        mode = zero(obs)
        return mode, {"spread": spread.cpu().numpy(), "mode": mode[:, :k]}

    venv = replace(cfg, envs=1).make_vector(policy.obs_horizon, policy.pred_horizon, policy.action_horizon)
    try:
        results = [r for i in range(states) for r in run_episodes(probe, venv, 1, seed=cfg.seed + i)]
        space = venv.single_action_space  # a chunk of actions: [steps, A]
    finally:
        venv.close()
    within = np.concatenate([r.decisions["spread"] for r in results]).astype(np.float64)
    modes = np.concatenate([r.decisions["mode"] for r in results]).reshape(len(within), -1)
    a = within.shape[1]
    low, high = (np.asarray(b, dtype=np.float64).reshape(-1, a)[0] for b in (space.low, space.high))
    half = (high - low) / 2
    return Spread(within.mean(axis=0), float(modes.std(axis=0).mean()), half)


def residual_scale(spread: Spread) -> float:
    """The base's spread across noises as a share of half the action range (mean over coordinates),
    rounded to two digits (so every process of a run measures the same number) and clamped to
    :data:`SCALE_RANGE` (also where the action range is unbounded)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        share = float(np.mean(spread.within / spread.half_range))
    if not np.isfinite(share):
        share = SCALE_RANGE[0]
    return float(np.clip(round(share, 2), *SCALE_RANGE))
