"""LeRobot's feature normalisation, with the formulas of the LeRobot version that saved the policy.

The two layouts differ in one place that matters for bit-level agreement: LeRobot 0.3 divides
MIN_MAX data by ``max - min + 1e-8``, LeRobot 0.4 by ``max - min`` (``eps`` only where the range
is zero). Statistics are buffers, so they travel with the policy but are never trained.
"""

from __future__ import annotations

import torch
from torch import nn

from dpft.base_policies.lerobot.folder import NORM_STATS


class LeRobotNormalizer(nn.Module):
    """``normalize`` / ``unnormalize`` of one feature under one of LeRobot's modes."""

    def __init__(self, mode: str, stats: dict[str, torch.Tensor], layout: str, eps: float) -> None:
        super().__init__()
        self.mode, self.layout, self.eps = mode, layout, eps
        names = NORM_STATS[mode]
        if names:
            self.register_buffer("low", stats[names[0]].clone().float())  # mean, min or lower quantile
            self.register_buffer("high", stats[names[1]].clone().float())  # std, max or upper quantile

    def _range(self) -> torch.Tensor:
        if self.layout == "buffers":
            return self.high - self.low + 1e-8
        return torch.where(self.high - self.low == 0, torch.full_like(self.high, self.eps), self.high - self.low)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "IDENTITY":
            return x
        if self.mode == "MEAN_STD":
            return (x - self.low) / (self.high + self.eps)
        if self.layout == "buffers":  # LeRobot 0.3 writes it in two steps; kept, for the same rounding
            return (x - self.low) / self._range() * 2 - 1
        return 2 * (x - self.low) / self._range() - 1

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "IDENTITY":
            return x
        if self.mode == "MEAN_STD":
            return x * self.high + self.low
        if self.layout == "buffers":
            return (x + 1) / 2 * (self.high - self.low) + self.low
        return (x + 1) / 2 * self._range() + self.low
