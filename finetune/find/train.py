"""``dpft finetune find``: FIND, the on-policy sibling of DSRL.

DSRL learns *which* noise to give the frozen base with an off-policy critic (SAC). FIND optimises
the *distribution* of the initial noise on-policy: a Gaussian over the noise, conditioned on the
observation, improved with PPO's clipped ratio against the distribution that collected the
rollout (so one update cannot move it far), and rewards calibrated as they change. It runs on
the shared run loop (:func:`~dpft.finetune.common.run.run_sb3`): the same run folder, exact
``--resume``, ``--final guarded``, presets, TensorBoard (PPO's ``train/clip_fraction``,
``train/approx_kl``, ``train/explained_variance``), several processes.

* **Decisions.** Each chunk's noise is one action of the task's MDP (:class:`NoiseActionEnv`);
  GAE over chunk decisions with ``gamma ** action_horizon``, a value function on observations.
* **Start.** The noise distribution starts at the base's own N(0, I) (:mod:`.policy`): the first
  rollouts are the base's, and the deterministic policy is the base with zero noise.
* **Reward calibration.** FIND rescales rewards dynamically so the update's scale does not drift as
  the reward distribution changes; here the reward is divided by a running std of the discounted
  return (:class:`RewardNormalizer`, kept in checkpoints). The mean is not subtracted: on tasks
  whose episodes end (the success reward ends them), a shifted reward changes which policy is
  optimal. PPO also standardises each minibatch's advantages.
* **Artifact.** A steered policy (``type: dsrl``, ``variant: find``): ``dpft eval`` and a later
  ``finetune residual --base`` read it as they read a DSRL policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv

from dpft.base_policies.infra.registry import multi_process
from dpft.base_policies.policy import Policy
from dpft.envs.tasks import task_defines_success
from dpft.finetune.common.config import OnPolicyConfig
from dpft.finetune.common.normalize import RewardNormalizer
from dpft.finetune.common.run import SB3Method, run_sb3
from dpft.finetune.dsrl.noise_env import NoiseActionEnv, NoiseVecEnv
from dpft.finetune.dsrl.steered import SteeredPolicy
from dpft.finetune.find.policy import SquashedNoisePolicy, actor_from_ppo, initial_log_std


@dataclass
class FINDConfig(OnPolicyConfig):
    """Fine-tune the initial-noise distribution on-policy (FIND); the base stays frozen."""

    RANGES: ClassVar[dict[str, str]] = {
        "action_magnitude": "> 0",
        "hidden": ">= 1",
        "layers": ">= 1",
        "ent_coef": ">= 0",
    }
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

    out: Path = Path("runs/find")
    action_magnitude: float = 2.5
    """Noise bound m: the noise is m * tanh(v). 2.5 lets the start match N(0, I) in the bulk."""
    hidden: int = 256
    """Width of the policy and value networks."""
    layers: int = 2
    """Hidden layers of the policy and value networks."""
    target_kl: float = 0.02
    """Stop an update's epochs early past this approximate KL (0: never)."""
    ent_coef: float = 0.0
    """Entropy bonus (an estimate: the squashed Gaussian has no closed-form entropy)."""
    calibrate_reward: bool = True
    """Divide rewards by a running std of the discounted return (FIND's reward calibration)."""


class FIND(SB3Method):
    """FIND on the shared run loop: PPO over the base's initial noise."""

    command = "finetune find"
    config_cls = FINDConfig

    def env_steps_per_transition(self, cfg: FINDConfig, base: Policy) -> int:
        return base.action_horizon

    def check_processes(self, cfg: FINDConfig, world: int) -> None:
        cfg.check_processes("FIND", world)

    def make_env(self, cfg: FINDConfig, base: Policy) -> NoiseActionEnv:
        return NoiseActionEnv(cfg.make_chunked(base), base, cfg.action_magnitude, 0, task_defines_success(cfg.task))

    def wrap_vec_env(self, cfg: FINDConfig, base: Policy, venv: VecEnv) -> VecEnv:
        noise = NoiseVecEnv(venv)  # one base call per vector step for all envs
        return RewardNormalizer(noise, cfg.gamma**base.action_horizon) if cfg.calibrate_reward else noise

    def algorithm(self, cfg: FINDConfig) -> type[PPO]:
        return PPO

    def new_model(self, cfg: FINDConfig, base: Policy, venv: VecEnv) -> PPO:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        return PPO(
            SquashedNoisePolicy,
            venv,
            learning_rate=cfg.lr,
            n_steps=cfg.rollout_steps,
            batch_size=cfg.batch_size,
            n_epochs=cfg.epochs,
            gamma=cfg.gamma**base.action_horizon,
            gae_lambda=cfg.gae_lambda,
            clip_range=cfg.clip_range,
            ent_coef=cfg.ent_coef,
            target_kl=cfg.target_kl or None,
            policy_kwargs={
                "net_arch": {"pi": [cfg.hidden] * cfg.layers, "vf": [cfg.hidden] * cfg.layers},
                "log_std_init": initial_log_std(cfg.action_magnitude),
            },
            seed=cfg.seed,
            verbose=0,
            device=base.device,
        )

    def artifact(self, model: PPO, base: Policy, cfg: FINDConfig) -> SteeredPolicy:
        meta = {
            "variant": "find",
            "task": cfg.task,
            "reward": cfg.reward,
            "action_magnitude": cfg.action_magnitude,
            "hidden": [cfg.hidden] * cfg.layers,
            "provenance": {"method": "finetune find", "base_source": str(cfg.base), "run": str(cfg.out)},
        }
        return SteeredPolicy(base, actor_from_ppo(model.policy).to(base.device), meta)


@multi_process
def train_find(cfg: FINDConfig) -> Path:
    """Fine-tune the base's initial-noise distribution on-policy (FIND); returns the policy's folder."""
    return run_sb3(cfg, FIND())
