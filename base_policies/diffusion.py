"""DDPM-trained, DDIM-sampled diffusion policy with epsilon prediction.

Training noises clean (normalised) action chunks at one of ``num_train_steps`` levels of a
cosine schedule and regresses the noise. Sampling runs DDIM with eta = 0 over
``num_inference_steps`` levels, starting from the caller's noise, so the chunk is a
deterministic function of (observation, noise) -- what DSRL steers.
"""

from __future__ import annotations

import math

import torch

from dpft.base_policies.config import PolicyConfig
from dpft.base_policies.policy import DenoisingPolicy, register_policy

LOG_2PI = math.log(2 * math.pi)


def cosine_alphas_cumprod(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cumulative signal fraction for the cosine schedule of Nichol & Dhariwal (2021)."""

    def f(t: float) -> float:
        return math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - f(i + 1) / f(i), max_beta) for i in range(num_steps)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Log-density summed over all but the leading dimensions."""
    lp = -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * LOG_2PI
    return lp.flatten(start_dim=lp.dim() - 2).sum(-1)


@register_policy("diffusion")
class DiffusionPolicy(DenoisingPolicy):
    """Diffusion policy; see the module docstring for the training/sampling scheme."""

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
        return torch.randint(0, self.config.arch.num_train_steps, (batch,), generator=generator)

    def denoising_loss(self, obs, actions, t, noise):
        x0 = self.action_normalizer.normalize(actions)
        ab = self.alphas_cumprod[t].view(-1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        eps = self.denoiser(xt, t.float(), self.condition(obs))
        return ((eps - noise) ** 2).mean(dim=(1, 2))

    # ----- DDIM ---------------------------------------------------------------------
    def _ddim_terms(self, cond: torch.Tensor, x: torch.Tensor, t: torch.Tensor, eta: float):
        """Mean and std of ``x_{t-stride}`` given ``x_t``; ``t`` is ``[B]`` step indices."""
        ab = self.alphas_cumprod[t].view(-1, 1, 1)
        prev = t - self.stride
        ab_prev = torch.where(prev >= 0, self.alphas_cumprod[prev.clamp(min=0)], torch.ones_like(t, dtype=ab.dtype))
        ab_prev = ab_prev.view(-1, 1, 1)
        eps = self.denoiser(x, t.float(), cond)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        if self.config.arch.clip_sample:
            x0 = x0.clamp(-1, 1)
        var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        std = eta * var.clamp(min=0).sqrt()
        mean = ab_prev.sqrt() * x0 + (1 - ab_prev - std**2).clamp(min=0).sqrt() * eps
        return mean, std

    def sample(self, cond: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for t in self.timesteps:
            x, _ = self._ddim_terms(cond, x, t.expand(x.shape[0]), eta=0.0)
        return x

    def _chain_std(self, std: torch.Tensor, noise_level: float) -> torch.Tensor:
        # The last DDIM step has zero variance; a small floor keeps its log-prob finite.
        return std.clamp(min=1e-2 * noise_level)

    def sample_chain(self, obs, noise, step_noise, noise_level: float = 1.0):
        cond = self.condition(torch.as_tensor(obs, dtype=torch.float32))
        x = self.check_noise(noise, cond.shape[0])
        chain, log_probs = [x], []
        for k, t in enumerate(self.timesteps):
            mean, std = self._ddim_terms(cond, x, t.expand(x.shape[0]), eta=noise_level)
            std = self._chain_std(std, noise_level).expand_as(mean)
            x = mean + std * step_noise[:, k]
            chain.append(x)
            log_probs.append(gaussian_log_prob(x, mean, std))
        actions = self.action_normalizer.unnormalize(x)
        actions = torch.maximum(torch.minimum(actions, self.action_high), self.action_low)
        return actions, torch.stack(chain, 1), torch.stack(log_probs, 1)

    def chain_log_prob(self, obs, chain, noise_level: float = 1.0):
        B, K = chain.shape[0], chain.shape[1] - 1
        cond = self.condition(torch.as_tensor(obs, dtype=torch.float32)).repeat_interleave(K, 0)
        x = chain[:, :-1].reshape(B * K, *chain.shape[2:])
        t = self.timesteps.repeat(B)
        mean, std = self._ddim_terms(cond, x, t, eta=noise_level)
        std = self._chain_std(std, noise_level).expand_as(mean)
        return gaussian_log_prob(chain[:, 1:].reshape(B * K, *chain.shape[2:]), mean, std).view(B, K)
