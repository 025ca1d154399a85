"""``dpft finetune dppo``: fine-tune the base's own denoiser with PPO through its last denoising steps.

DSRL and FIND leave the base untouched and choose its noise; a residual adds a correction; DPPO
changes the denoiser itself, with policy gradients from the task's reward (DPO-style updates use
preference pairs instead). On the shared run loop (:func:`~dpft.finetune.common.run.run_sb3`): run
folder, exact ``--resume``, ``--final guarded``, presets, TensorBoard (``train/clip_fraction``,
``train/approx_kl``, ``train/explained_variance``, ``denoise/log_prob_step*``). The result in
``OUT/policy`` is a diffusion or flow policy folder with the fine-tuned weights.
See :mod:`.policy` for how the chain is the action, and :mod:`.algo` for the update.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv

from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.registry import multi_process
from dpft.base_policies.policy import DenoisingPolicy, Policy
from dpft.envs.tasks import task_defines_success
from dpft.finetune.common.config import OnPolicyConfig
from dpft.finetune.common.normalize import RewardNormalizer
from dpft.finetune.common.run import SB3Method, run_sb3
from dpft.finetune.dppo.algo import DPPO
from dpft.finetune.dppo.env import ChainEnv
from dpft.finetune.dppo.policy import ChainPolicy, action_size


@dataclass
class DPPOConfig(OnPolicyConfig):
    """Fine-tune a diffusion/flow policy's own denoiser with PPO through its last denoising steps (DPPO)."""

    RANGES: ClassVar[dict[str, str]] = {
        "ft_steps": ">= 0",
        "min_std": "> 0",
        "noise_level": "> 0",
        "denoise_gamma": "(0, 1]",
        "critic_lr_scale": "> 0",
        "value_hidden": ">= 1",
        "critic_warmup": ">= 0",
        "bc_coef": ">= 0",
    }
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

    out: Path = Path("runs/dppo")
    ft_steps: int = 0
    """Denoising steps fine-tuned, the last ones (0: all); the ones before run the frozen base."""
    min_std: float = 0.1
    """Floor of a fine-tuned step's std, in normalised action units (exploration)."""
    noise_level: float | None = None
    """Noise level of the stochastic steps (default: the policy's own, DDPM's for diffusion)."""
    denoise_gamma: float = 0.99
    """Discount per denoising step before the last: the steps nearest the chunk weigh most."""
    lr: float = 1e-5
    """Adam learning rate of the denoiser."""
    critic_lr_scale: float = 100.0
    """The value function's learning rate as a multiple of --lr."""
    value_hidden: int = 256
    """Width of the value function's two hidden layers."""
    batch_size: int = 256
    """Minibatch size (decisions) of a gradient step."""
    epochs: int = 5
    """Passes over each rollout."""
    clip_range: float = 0.1
    """Ratio clipping per denoising step. DPPO's papers use 0.01 with far larger batches; on the toy
    task of tests/test_dppo.py (16k env steps) 0.01 moved the base from 0.30 to 0.48 success and
    0.1 to 0.75, so 0.1 until a benchmark says otherwise."""
    critic_warmup: int = 2
    """Updates that train only the value function before the denoiser moves."""
    normalize_reward: bool = True
    """Divide rewards by a running std of the discounted return."""
    bc_coef: float = 0.0
    """Weight of DPPO's optional behaviour-cloning regulariser: the fine-tuned steps are also
    trained to make the frozen base's own chains (sampled on the rollout's observations) likely,
    which holds the policy near the base (0: off, as in DPPO's defaults)."""


class DPPOMethod(SB3Method):
    """DPPO on the shared run loop."""

    command = "finetune dppo"
    config_cls = DPPOConfig

    def check(self, cfg: DPPOConfig, base: Policy) -> None:
        if not isinstance(base, DenoisingPolicy):
            raise ConfigError(
                f"{cfg.base} is a {getattr(base, 'type_name', type(base).__name__)!r} policy; DPPO fine-tunes a "
                "denoiser's own weights, so --base must be a diffusion or flow policy"
            )

    def check_processes(self, cfg: DPPOConfig, world: int) -> None:
        cfg.check_processes("DPPO", world)

    def env_steps_per_transition(self, cfg: DPPOConfig, base: Policy) -> int:
        return base.action_horizon

    def make_env(self, cfg: DPPOConfig, base: DenoisingPolicy) -> ChainEnv:
        size = action_size(base, cfg.ft_steps)
        return ChainEnv(cfg.make_chunked(base), base, size, task_defines_success(cfg.task))

    def wrap_vec_env(self, cfg: DPPOConfig, base: Policy, venv: VecEnv) -> VecEnv:
        return RewardNormalizer(venv, cfg.gamma**base.action_horizon) if cfg.normalize_reward else venv

    def algorithm(self, cfg: DPPOConfig) -> type[DPPO]:
        return DPPO

    def new_model(self, cfg: DPPOConfig, base: DenoisingPolicy, venv: VecEnv) -> DPPO:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        model = DPPO(
            ChainPolicy,
            venv,
            learning_rate=cfg.lr,
            n_steps=cfg.rollout_steps,
            batch_size=cfg.batch_size,
            n_epochs=cfg.epochs,
            gamma=cfg.gamma**base.action_horizon,
            gae_lambda=cfg.gae_lambda,
            clip_range=cfg.clip_range,
            target_kl=cfg.target_kl or None,
            policy_kwargs=self.policy_kwargs(cfg),
            seed=cfg.seed,
            verbose=0,
            device=base.device,
        )
        for key, value in self.load_kwargs(cfg, base).items():
            setattr(model, key, value)
        return model

    def policy_kwargs(self, cfg: DPPOConfig) -> dict[str, Any]:
        return {
            "base_source": str(cfg.base),
            "ft_steps": cfg.ft_steps,
            "min_std": cfg.min_std,
            "noise_level": cfg.noise_level,
            "value_arch": (cfg.value_hidden, cfg.value_hidden),
            "critic_lr_scale": cfg.critic_lr_scale,
        }

    def load_kwargs(self, cfg: DPPOConfig, base: Policy) -> dict[str, Any]:
        return {"denoise_gamma": cfg.denoise_gamma, "critic_warmup": cfg.critic_warmup, "bc_coef": cfg.bc_coef}

    def artifact(self, model: DPPO, base: DenoisingPolicy, cfg: DPPOConfig) -> DenoisingPolicy:
        policy = copy.deepcopy(model.policy.actor).eval().requires_grad_(False)
        provenance = {
            "method": "finetune dppo",
            "base": str(cfg.base),
            "base_provenance": base.config.provenance,
            "ft_steps": model.policy.ft_steps,
            "min_std": cfg.min_std,
            "run": str(cfg.out),
        }
        policy.config = replace(policy.config, provenance=provenance)
        return policy


@multi_process
def train_dppo(cfg: DPPOConfig) -> Path:
    """Fine-tune the base's own denoiser with DPPO; returns the fine-tuned policy's folder."""
    return run_sb3(cfg, DPPOMethod())
