"""Reward normalisation for on-policy methods, with its statistics in the checkpoint.

SB3's ``VecNormalize`` scales rewards by a running estimate of the discounted return's standard
deviation; PPO is sensitive to the reward scale, and a user's reward wrapper may have any. SB3
keeps the statistics outside ``model.zip``; here they travel with dpft's checkpoint, so
``--resume`` continues with the same scale instead of starting the estimate over.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecNormalize


class RewardNormalizer(VecNormalize):
    """``VecNormalize(norm_obs=False, norm_reward=True)`` whose running statistics are
    checkpoint state (``get_vec_state`` / ``set_vec_state``)."""

    def __init__(self, venv: VecEnv, gamma: float) -> None:
        super().__init__(venv, norm_obs=False, norm_reward=True, gamma=gamma)

    def get_vec_state(self) -> dict[str, Any]:
        rms = self.ret_rms
        return {
            "mean": np.asarray(rms.mean),
            "var": np.asarray(rms.var),
            "count": float(rms.count),
            "returns": self.returns.copy(),
        }

    def set_vec_state(self, state: dict[str, Any], obs: np.ndarray) -> np.ndarray:
        self.ret_rms.mean = np.asarray(state["mean"], np.float64)
        self.ret_rms.var = np.asarray(state["var"], np.float64)
        self.ret_rms.count = float(state["count"])
        self.returns = np.asarray(state["returns"], np.float64).copy()
        self.old_obs = obs
        return obs
