"""The noise schedules a LeRobot diffusion policy can name, computed as Hugging Face
``diffusers`` computes them (LeRobot builds its ``DDPMScheduler`` / ``DDIMScheduler`` from the
policy config), so a LeRobot checkpoint is sampled on exactly the levels it was trained on.

Only what LeRobot's config can set is covered: ``beta_schedule``, ``beta_start``/``beta_end``,
``num_train_timesteps``, the number of inference steps, and LeRobot's fixed scheduler defaults
(``timestep_spacing="leading"``, ``steps_offset=0``, DDIM ``set_alpha_to_one=True``, DDPM
``variance_type="fixed_small"``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dpft.base_policies.infra.errors import CheckpointError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


def betas(schedule: str, num_steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """``[num_steps]`` float32 betas of a diffusers ``beta_schedule``."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        values = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999) for i in range(num_steps)]
        return torch.tensor(values, dtype=torch.float32)
    if schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, num_steps)) * (beta_end - beta_start) + beta_start
    raise CheckpointError(f"beta_schedule {schedule!r} is not supported; LeRobot's choices are {list(BETA_SCHEDULES)}")


def alphas_cumprod(schedule: str, num_steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    return torch.cumprod(1.0 - betas(schedule, num_steps, beta_start, beta_end), dim=0)


def leading_timesteps(num_train_steps: int, num_inference_steps: int) -> torch.Tensor:
    """``[K]`` int64 steps from noise to sample, diffusers' ``"leading"`` spacing: ``(K-1)r, ..., r, 0``
    with ``r = num_train_steps // K``."""
    ratio = num_train_steps // num_inference_steps
    return torch.from_numpy((np.arange(0, num_inference_steps) * ratio).round()[::-1].copy().astype(np.int64))
