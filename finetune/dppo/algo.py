"""DPPO's update: PPO's clipped objective per fine-tuned denoising step.

Every denoising step of a decision shares that decision's advantage (GAE over environment
decisions), discounted by ``denoise_gamma`` per step before the last one, so the steps nearest
the executed chunk weigh most (DPPO's two-level MDP). A step's ratio is clipped on its own. The
first ``critic_warmup`` updates train only the value function, so the policy's first steps
follow advantages from a critic that has seen the base's returns.
"""

from __future__ import annotations

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F


class DPPO(PPO):
    """SB3's PPO with :meth:`train` replaced (collection, GAE, checkpoints and logging are PPO's)."""

    denoise_gamma: float = 0.99
    critic_warmup: int = 0
    """Updates (one per rollout) that train only the value function."""
    bc_coef: float = 0.0
    """Weight of the behaviour-cloning regulariser (ChainPolicy.bc_loss); 0: off."""
    iterations: int = 0
    """Updates done so far (saved with the model, so a resumed run keeps its warm-up)."""

    def train(self) -> None:
        policy = self.policy
        policy.set_training_mode(True)
        clip = float(self.clip_range(self._current_progress_remaining))
        k = policy.ft_steps
        weights = self.denoise_gamma ** torch.arange(k - 1, -1, -1, dtype=torch.float32, device=self.device)
        warm = self.iterations < self.critic_warmup
        names = ("pg_loss", "value_loss", "approx_kl", "clip_fraction", "bc_loss")
        stats: dict[str, list[float]] = {n: [] for n in names}
        old_steps: list[torch.Tensor] = []
        stop = False
        for _ in range(self.n_epochs):
            for data in self.rollout_buffer.get(self.batch_size):
                chain, old = policy.split(data.actions)
                adv = data.advantages
                if self.normalize_advantage and len(adv) > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                value_loss = F.mse_loss(data.returns, policy.predict_values(data.observations).flatten())
                loss = self.vf_coef * value_loss
                if not warm:
                    log_ratio = policy.step_log_probs(data.observations, chain) - old
                    ratio = log_ratio.exp()
                    a = adv[:, None] * weights
                    pg_loss = -torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a).mean()
                    loss = loss + pg_loss
                    if self.bc_coef > 0:
                        bc = policy.bc_loss(data.observations)
                        loss = loss + self.bc_coef * bc
                        stats["bc_loss"].append(bc.item())
                    with torch.no_grad():
                        kl = ((ratio - 1) - log_ratio).mean().item()
                    stats["pg_loss"].append(pg_loss.item())
                    stats["approx_kl"].append(kl)
                    stats["clip_fraction"].append(((ratio - 1).abs() > clip).float().mean().item())
                    old_steps.append(old.detach())
                    if self.target_kl is not None and kl > 1.5 * self.target_kl:
                        stop = True
                        break
                stats["value_loss"].append(value_loss.item())
                policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
                policy.optimizer.step()
            self._n_updates += 1
            if stop:
                break
        values = self.rollout_buffer.values.flatten()
        self.logger.record(
            "train/explained_variance", explained_variance(values, self.rollout_buffer.returns.flatten())
        )
        for name, xs in stats.items():
            if xs:
                self.logger.record(f"train/{name}", float(np.mean(xs)))
        if old_steps:  # how sure each fine-tuned denoising step is (DPPO's per-step log-prob statistics)
            lp = torch.cat(old_steps)
            for i in range(k):
                self.logger.record(f"denoise/log_prob_step{i}", float(lp[:, i].mean()))
        self.iterations += 1
        self.logger.record("train/critic_warmup", int(warm))
        self.logger.record("train/n_updates", self._n_updates)
