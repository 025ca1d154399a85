"""How often an off-policy learner updates, and with which optimiser settings.

Measured on the 2-core CPU of the benchmarks (experiments/results/speed.md): a DSRL-NA gradient
step is compute-bound (about two thirds matrix products, a third of it the frozen base denoising
the TD target's chunks), so the code around it has little left to give. What does trade time is
the number of gradient steps: the update-to-data ratio (UTD). A UTD below 1 updates once every
few transitions; SB3 expresses that as ``train_freq`` (vector steps between updates) and
``gradient_steps`` (updates then), which this module derives from a single number.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from dpft.base_policies.infra.errors import ConfigError


def check_utd(utd: float) -> None:
    """A UTD SB3 can run: a whole number of updates per transition, or one update per whole
    number of transitions (0.5, 0.25, ...)."""
    if not (math.isfinite(utd) and utd > 0 and (float(utd).is_integer() or float(1 / utd).is_integer())):
        raise ConfigError(
            f"--utd {utd} must be a whole number (1, 2, 4: updates per transition) or one over a whole "
            "number (0.5, 0.25: one update every 2 or 4 transitions)"
        )


def update_frequency(utd: float, envs: int) -> dict[str, int]:
    """SB3's ``train_freq`` (vector steps between updates) and ``gradient_steps`` (updates then)
    for ``utd`` updates per transition with ``envs`` transitions per vector step."""
    check_utd(utd)
    per_vector_step = Fraction(utd).limit_denominator(1000) * envs
    return {"train_freq": per_vector_step.denominator, "gradient_steps": per_vector_step.numerator}


def gradient_steps_for(transitions: int, utd: float) -> int:
    """Gradient steps over ``transitions`` transitions (the critic warm-up's length in updates)."""
    return int(transitions * utd)


def optimizer_kwargs(device: torch.device) -> dict[str, bool]:
    """Adam's fused kernel (one pass over all tensors instead of a loop per tensor; the same
    update to float rounding) where PyTorch has it."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {}
