"""Flow-matching policy on the rectified-flow path.

Training: ``x_t = (1 - t) * noise + t * action`` with ``t ~ U(0, 1)``, regress the velocity
``action - noise``. Sampling integrates ``dx/dt = v(x, t)`` from the caller's noise at t = 0
to t = 1 with Euler or midpoint steps: deterministic given the noise. The stochastic chain
for fine-tuning takes Euler-Maruyama steps ``x_{k+1} ~ N(x_k + v dt, noise_level^2 dt)``.
"""

from __future__ import annotations

import math

import torch

from dpft.base_policies.config import PolicyConfig
from dpft.base_policies.fast_sampling import SamplerPlan
from dpft.base_policies.policy import DenoisingPolicy, register_policy

TIME_SCALE = 100.0  # flow time in [0, 1] is scaled to the range the time embedding expects


@register_policy("flow")
class FlowPolicy(DenoisingPolicy):
    """Flow-matching policy; see the module docstring."""

    default_noise_level = 0.1

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__(config)
        n = config.arch.num_inference_steps
        self.dt = 1.0 / n
        times = torch.tensor([k * self.dt for k in range(n)], dtype=torch.float32)
        self.register_buffer("timesteps", times, persistent=False)

    def velocity(self, cond: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, t * TIME_SCALE, cond)

    # ----- training -----------------------------------------------------------------
    def sample_times(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        where = generator.device if generator is not None else self.device
        return torch.rand(batch, generator=generator, device=where).to(self.device)

    def denoising_loss(self, obs, actions, t, noise):
        x1 = self.action_normalizer.normalize(actions)
        tt = t.view(-1, 1, 1)
        xt = (1 - tt) * noise + tt * x1
        v = self.velocity(self.condition(obs), xt, t)
        return ((v - (x1 - noise)) ** 2).mean(dim=(1, 2))

    def sampler_plan(self) -> SamplerPlan:
        """Euler or midpoint over ``timesteps``; the time inputs as :meth:`velocity` computes them."""
        t = self.timesteps.cpu()
        if self.config.arch.integrator == "midpoint":
            t = torch.stack([t, t + 0.5 * self.dt], 1).flatten()
        times = tuple(float(v) for v in t * TIME_SCALE)
        return SamplerPlan(self.config.arch.integrator, times, dt=self.dt)

    # ----- ODE / SDE steps ----------------------------------------------------------
    def step(self, cond, x, t):
        """One Euler or midpoint step of ``dx/dt = v(x, t)``."""
        v = self.velocity(cond, x, t)
        if self.config.arch.integrator == "midpoint":
            v = self.velocity(cond, x + 0.5 * self.dt * v, t + 0.5 * self.dt)
        return x + self.dt * v

    def step_mean_std(self, cond, x, t, noise_level):
        """Euler-Maruyama: ``x_{k+1} ~ N(x_k + v dt, noise_level^2 dt)``."""
        mean = x + self.dt * self.velocity(cond, x, t)
        return mean, torch.full_like(mean, noise_level * math.sqrt(self.dt))

    def finish(self, x):
        return x.clamp(-1, 1) if self.config.arch.clip_sample else x
