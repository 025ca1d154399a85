"""Small synthetic demonstration sets written by the tests (no downloads needed)."""

from __future__ import annotations

import numpy as np

from dpft.base_policies.data import Episode

HORIZON = 8


def bimodal_episodes(n: int, left_fraction: float = 0.7, seed: int = 0) -> list[Episode]:
    """A 2-D point starts near the origin and must pass an obstacle at (0, 1).

    Demonstrators go around it on the left (x = -1 at the obstacle) with probability
    ``left_fraction`` and on the right otherwise. obs = current position, action = next
    waypoint; the chunk predicted at the start is the whole 8-waypoint path.
    """
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        side = -1.0 if rng.random() < left_fraction else 1.0
        start = rng.normal(0.0, 0.05, size=2)
        y = np.linspace(0.25, 2.0, HORIZON)
        path = np.stack([start[0] + side * np.sin(np.pi * y / 2), start[1] + y], axis=1)
        obs = np.concatenate([start[None], path[:-1]]).astype(np.float32)
        eps.append(Episode(f"demo_{i}", obs, path.astype(np.float32), np.zeros(HORIZON, np.float32)))
    return eps


def offset_reach_episodes(n: int, offset: float = 0.4, seed: int = 0) -> list[Episode]:
    """``toy_envs:Reach-v0`` demonstrations that aim at the goal shifted up by ``offset``: a
    proportional controller (gain 1, actions clipped to [-1, 1], displacement 0.25 per step)
    plus a little action noise, 12 steps each."""
    rng = np.random.default_rng(seed)
    target = np.array([1.0, 0.5 + offset])
    eps = []
    for i in range(n):
        pos, obs, acts = rng.normal(0.0, 0.05, size=2), [], []
        for _ in range(12):
            a = np.clip((target - pos) / 0.25 + rng.normal(0, 0.05, 2), -1, 1)
            obs.append(pos.copy())
            acts.append(a)
            pos = pos + 0.25 * a
        eps.append(
            Episode(f"demo_{i}", np.asarray(obs, np.float32), np.asarray(acts, np.float32), np.zeros(12, np.float32))
        )
    return eps


def obstacle_x(chunks: np.ndarray) -> np.ndarray:
    """x position of each chunk at the obstacle's height (waypoint 3, y = 1.0)."""
    return chunks[:, 3, 0]
