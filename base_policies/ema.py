"""Exponential moving average of weights; the saved policy uses the EMA copy."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``shadow`` as an EMA of ``model``. The decay warms up as ``(1+k)/(10+k)``
    (capped at ``decay``) so early, poor weights are forgotten quickly; ``warmup=False`` uses
    ``decay`` from the first step (fine-tuning, where the starting weights are already good)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        torch._foreach_lerp_(list(self.shadow.parameters()), [p.detach() for p in model.parameters()], 1 - d)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)
