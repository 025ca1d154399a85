"""Observation and action normalisation kept inside the model's state.

Statistics are registered as buffers, so they are saved in ``model.safetensors`` with the
weights and can never be separated from them.
"""

from __future__ import annotations

import torch
from torch import nn


class Normalizer(nn.Module):
    """Affine map ``x -> (x - shift) / scale`` per feature.

    ``mode="gaussian"`` centres on the mean and divides by the standard deviation (used for
    observations); ``mode="minmax"`` maps the data range to [-1, 1] (used for actions, so
    that clipping the predicted clean sample to [-1, 1] means staying inside the data range).
    Features with (near) zero spread are left unscaled instead of blowing up.
    """

    def __init__(self, dim: int, mode: str = "gaussian", eps: float = 1e-4) -> None:
        super().__init__()
        self.mode = mode
        self.eps = eps
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @torch.no_grad()
    def fit(self, data: torch.Tensor) -> None:
        """Set statistics from ``data`` of shape ``[N, dim]``."""
        data = data.reshape(-1, data.shape[-1]).double()
        if self.mode == "gaussian":
            shift, scale = data.mean(0), data.std(0, unbiased=False)
        elif self.mode == "minmax":
            lo, hi = data.min(0).values, data.max(0).values
            shift, scale = (hi + lo) / 2, (hi - lo) / 2
        else:
            raise ValueError(f"unknown normaliser mode {self.mode!r}")
        scale = torch.where(scale < self.eps, torch.ones_like(scale), scale)
        self.shift.copy_(shift.float())
        self.scale.copy_(scale.float())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift
