"""DDPM-trained, DDIM-sampled diffusion policy with epsilon prediction.

Training noises clean (normalised) action chunks at one of ``num_train_steps`` levels of a
cosine schedule and regresses the noise. Sampling runs DDIM with eta = 0 over
``num_inference_steps`` levels, starting from the caller's noise, so the chunk is a
deterministic function of (observation, noise) -- what DSRL steers. The stochastic chain
for fine-tuning is DDIM with eta = noise_level over the same levels.
"""

from __future__ import annotations

import math

import torch

from dpft.base_policies.config import PolicyConfig
from dpft.base_policies.fast_sampling import SamplerPlan
from dpft.base_policies.policy import DenoisingPolicy, register_policy


def cosine_alphas_cumprod(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cumulative signal fraction for the cosine schedule of Nichol & Dhariwal (2021)."""

    def f(t: float) -> float:
        return math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - f(i + 1) / f(i), max_beta) for i in range(num_steps)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


@register_policy("diffusion")
class DiffusionPolicy(DenoisingPolicy):
    """Diffusion policy; see the module docstring for the training/sampling scheme."""

    default_noise_level = 1.0  # DDIM eta = 1: the DDPM posterior variance

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__(config)
        a = config.arch
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(a.num_train_steps), persistent=False)
        stride = a.num_train_steps // a.num_inference_steps
        steps = torch.arange(a.num_inference_steps - 1, -1, -1) * stride
        self.register_buffer("timesteps", steps, persistent=False)
        self.stride = stride

    # ----- training -----------------------------------------------------------------
    def sample_times(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        where = generator.device if generator is not None else self.device
        t = torch.randint(0, self.config.arch.num_train_steps, (batch,), generator=generator, device=where)
        return t.to(self.device)

    def denoising_loss(self, obs, actions, t, noise):
        x0 = self.action_normalizer.normalize(actions)
        ab = self.alphas_cumprod[t].view(-1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        eps = self.denoiser(xt, t.float(), self.condition(obs))
        return ((eps - noise) ** 2).mean(dim=(1, 2))

    def sampler_plan(self) -> SamplerPlan:
        """DDIM (eta = 0) over ``timesteps``, coefficients in float32 as :meth:`step_mean_std` has them."""
        coefs = []
        for t in self.timesteps.cpu():
            ab = self.alphas_cumprod.cpu()[t]
            prev = int(t) - self.stride
            ab_prev = self.alphas_cumprod.cpu()[prev] if prev >= 0 else torch.tensor(1.0)
            values = ((1 - ab).sqrt(), ab.sqrt(), ab_prev.sqrt(), (1 - ab_prev).clamp(min=0).sqrt())
            coefs.append(tuple(float(v) for v in values))
        times = tuple(float(t) for t in self.timesteps.float().cpu())
        return SamplerPlan("ddim", times, coefs=tuple(coefs), clip_x0=self.config.arch.clip_sample)

    # ----- DDIM step ----------------------------------------------------------------
    def step_mean_std(self, cond, x, t, noise_level):
        """DDIM from step index ``t`` to ``t - stride`` with eta = ``noise_level``. The last step
        has zero variance; a floor of ``1e-2 * noise_level`` keeps its log-prob finite."""
        ab = self.alphas_cumprod[t].view(-1, 1, 1)
        prev = t - self.stride
        ab_prev = torch.where(prev >= 0, self.alphas_cumprod[prev.clamp(min=0)], 1.0).view(-1, 1, 1)
        eps = self.denoiser(x, t.float(), cond)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        if self.config.arch.clip_sample:
            x0 = x0.clamp(-1, 1)
        var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        std = noise_level * var.clamp(min=0).sqrt()
        mean = ab_prev.sqrt() * x0 + (1 - ab_prev - std**2).clamp(min=0).sqrt() * eps
        return mean, std.clamp(min=1e-2 * noise_level)
