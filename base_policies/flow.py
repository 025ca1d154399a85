"""Flow-matching policy on the rectified-flow path.

Training: ``x_t = (1 - t) * noise + t * action`` with ``t ~ U(0, 1)``, regress the velocity
``action - noise``. Sampling integrates ``dx/dt = v(x, t)`` from the caller's noise at t = 0
to t = 1 with Euler or midpoint steps: deterministic given the noise.
"""

from __future__ import annotations

import math

import torch

from dpft.base_policies.diffusion import gaussian_log_prob
from dpft.base_policies.policy import DenoisingPolicy, register_policy

TIME_SCALE = 100.0  # flow time in [0, 1] is scaled to the range the time embedding expects


@register_policy("flow")
class FlowPolicy(DenoisingPolicy):
    """Flow-matching policy; see the module docstring."""

    def velocity(self, cond: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, t * TIME_SCALE, cond)

    def sample_times(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.rand(batch, generator=generator)

    def denoising_loss(self, obs, actions, t, noise):
        x1 = self.action_normalizer.normalize(actions)
        tt = t.view(-1, 1, 1)
        xt = (1 - tt) * noise + tt * x1
        v = self.velocity(self.condition(obs), xt, t)
        return ((v - (x1 - noise)) ** 2).mean(dim=(1, 2))

    def sample(self, cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n = self.config.arch.num_inference_steps
        dt = 1.0 / n
        for k in range(n):
            t = torch.full((x.shape[0],), k * dt, device=x.device)
            v = self.velocity(cond, x, t)
            if self.config.arch.integrator == "midpoint":
                v = self.velocity(cond, x + 0.5 * dt * v, t + 0.5 * dt)
            x = x + dt * v
        return x.clamp(-1, 1) if self.config.arch.clip_sample else x

    # Stochastic chain: Euler-Maruyama steps x_{k+1} ~ N(x_k + v dt, noise_level^2 dt).
    def _step_mean(self, cond, x, k: torch.Tensor, dt: float) -> torch.Tensor:
        return x + dt * self.velocity(cond, x, k.float() * dt)

    def sample_chain(self, obs, noise, step_noise, noise_level: float = 0.1):
        cond = self.condition(torch.as_tensor(obs, dtype=torch.float32))
        x = self.check_noise(noise, cond.shape[0])
        n = self.config.arch.num_inference_steps
        dt, std = 1.0 / n, torch.tensor(noise_level * math.sqrt(1.0 / n))
        chain, log_probs = [x], []
        for k in range(n):
            mean = self._step_mean(cond, x, torch.full((x.shape[0],), k), dt)
            x = mean + std * step_noise[:, k]
            chain.append(x)
            log_probs.append(gaussian_log_prob(x, mean, std.expand_as(mean)))
        out = x.clamp(-1, 1) if self.config.arch.clip_sample else x
        actions = self.action_normalizer.unnormalize(out)
        actions = torch.maximum(torch.minimum(actions, self.action_high), self.action_low)
        return actions, torch.stack(chain, 1), torch.stack(log_probs, 1)

    def chain_log_prob(self, obs, chain, noise_level: float = 0.1):
        B, K = chain.shape[0], chain.shape[1] - 1
        cond = self.condition(torch.as_tensor(obs, dtype=torch.float32)).repeat_interleave(K, 0)
        x = chain[:, :-1].reshape(B * K, *chain.shape[2:])
        k = torch.arange(K).repeat(B)
        mean = self._step_mean(cond, x, k, 1.0 / K)
        std = torch.tensor(noise_level * math.sqrt(1.0 / K)).expand_as(mean)
        return gaussian_log_prob(chain[:, 1:].reshape(B * K, *chain.shape[2:]), mean, std).view(B, K)
