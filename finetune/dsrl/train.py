"""``dpft finetune dsrl``: steer a frozen diffusion policy by learning its initial noise.

DSRL (Wagenmaker et al., 2025). Both variants train on :class:`NoiseActionEnv`, whose action
is the base policy's (flattened, bounded) noise:

* ``sac``: plain stable-baselines3 SAC (:class:`DSRLSAC`);
* ``na``: noise aliasing (:class:`DSRLNA`), an action-chunk critic distilled into the noise critic.

Warm-up transitions use the base policy's own N(0, I) noise, so the replay buffer starts
with the base behaviour rather than uniform noise. One transition = one executed chunk,
so the discount is ``gamma ** action_horizon``; a time limit is stored as truncation
(SB3 bootstraps through it), not as a terminal state. TensorBoard's x axis is env steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
import tyro
from stable_baselines3.common.callbacks import BaseCallback

from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.registry import multi_process
from dpft.base_policies.policy import Policy
from dpft.base_policies.sb3_actor import SquashedMeanActor
from dpft.envs.tasks import task_defines_success
from dpft.finetune.common.callbacks import RecordScalars, TemperatureFloor, q_statistics
from dpft.finetune.common.config import FinetuneConfig
from dpft.finetune.common.networks import LayerNormSACPolicy
from dpft.finetune.common.run import SB3Method, run_sb3
from dpft.finetune.common.updates import check_utd, gradient_steps_for, optimizer_kwargs, update_frequency
from dpft.finetune.dsrl.na import DSRLNA
from dpft.finetune.dsrl.noise_env import NoiseActionEnv, NoiseVecEnv
from dpft.finetune.dsrl.replay import ChunkReplayBuffer
from dpft.finetune.dsrl.sac import DSRLSAC
from dpft.finetune.dsrl.steered import SteeredPolicy

VARIANTS = {"sac": DSRLSAC, "na": DSRLNA}


@dataclass
class NAOptions:
    """Noise aliasing's own settings: what the noise critic is distilled on."""

    RANGES: ClassVar[dict[str, str]] = {"distill_samples": ">= 0", "distill_within_weight": ">= 0"}
    distill_samples: int = 4
    """N(0, I) noises denoised per collected transition for distilling the noise critic."""
    distill_policy_noise: bool = True
    """Also distil the noise critic on the actor's own noise (the chunks the TD target denoises anyway)."""
    distill_within_weight: float = 0.0
    """Extra weight on the noise critic's error across noises within a state (what the actor follows)."""


@dataclass
class DSRLConfig(FinetuneConfig):
    """Fine-tune a frozen diffusion/flow policy with DSRL (RL over its initial noise)."""

    RANGES: ClassVar[dict[str, str]] = {
        "action_magnitude": "> 0",
        "hidden": ">= 1",
        "layers": ">= 1",
        "critics": ">= 1",
        "utd": "> 0",
        "target_entropy": "any",
        "target_kl": "> 0",
        "init_alpha": "> 0",
        "min_alpha": ">= 0",
        "warmup_steps": ">= 0",
        "critic_warmup_steps": ">= 0",
        "gamma": "[0, 1]",
        "batch_size": ">= 1",
        "lr": "(0, 1]",
        "actor_lr": "(0, 1]",
        "actor_ema": "[0, 1)",
    }
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""
    MOVED: ClassVar[dict[str, str]] = {
        k: f"na.{k}" for k in ("distill_samples", "distill_policy_noise", "distill_within_weight")
    }
    """Settings that were flat before the per-variant group: a config file or a run's config.yaml
    that names them flat still reads (dpft.base_policies.infra.records)."""

    out: Path = Path("runs/dsrl")
    """Run folder; the steered policy is written to OUT/policy."""
    variant: str = "na"
    """na: noise aliasing (action-chunk critic distilled into a noise critic); sac: noise-space SAC."""
    steps: int = 100_000
    """Environment-step budget (transitions are chunks of action_horizon steps); 100k in every
    DSRL benchmark row."""
    action_magnitude: float = 1.5
    """Bound on each noise coordinate chosen by the agent."""
    hidden: int = 256
    """Width of actor and critic layers."""
    layers: int = 2
    """Number of hidden layers of actor and critic."""
    layer_norm: Annotated[bool | None, tyro.conf.DisallowNone] = None  # --layer-norm / --no-layer-norm
    """LayerNorm after every hidden layer of the critics (default: from the task's preset, on where
    the task reports success; see dpft.finetune.common.presets)."""
    critics: int = 2
    """Size of the critic ensemble (the TD target and the actor use the minimum over it)."""
    na: NAOptions = field(default_factory=NAOptions)
    """--variant na only (--na.*): how the noise critic is distilled."""
    utd: float | None = None
    """Gradient steps per collected transition (update-to-data ratio): 1, 2, ... or 0.5 (one
    update every 2 transitions: 8.3 instead of 13.1 min per 100k env steps on push, and what it
    costs in success, in experiments/results/speed.md). Default: from the task's preset (2 where
    the task reports success, 1 otherwise)."""
    target_entropy: float = 0.0
    """SAC target entropy (per noise vector); not used by na with --noise-prior."""
    noise_prior: bool = True
    """na: regularise toward the base's own N(0, I) noise (a KL penalty) instead of maximising entropy."""
    target_kl: float = 12.0
    """na with --noise-prior: the temperature is tuned toward this KL(noise policy || N(0, I)) per decision."""
    q_scaled_temperature: bool = True
    """na: measure the temperature in units of the critic's scale, max(1, mean |Q|), so --init-alpha
    means the same for a sparse 0/1 reward and a dense one with returns in the hundreds."""
    init_alpha: float | None = None
    """Initial temperature (default: 0.01 for na with --noise-prior, which then only has to rise
    if the noise drifts too far; 1.0, SB3's default, otherwise)."""
    min_alpha: float = 0.0
    """Floor on the entropy temperature (guards against the collapse seen when alpha decays)."""
    warmup_steps: int = 2000
    """Environment steps collected with the base policy's own N(0, I) noise before learning."""
    critic_warmup_steps: int = 0
    """Environment steps after the warm-up during which only the critics learn, while the rollouts
    keep the base's own N(0, I) noise (na: its TD target evaluates that noise too, so the critics
    fit the base's value); the actor and the temperature start after them."""
    gamma: float = 0.99
    """Per-environment-step discount."""
    batch_size: int = 128
    """SAC batch size (128: every DSRL benchmark row)."""
    lr: float = 3e-4
    """Learning rate of actor, critic and temperature."""
    actor_lr: float | None = None
    """The actor's own learning rate (default: --lr): an actor slower than its critics climbs
    values the critics have had time to correct."""
    actor_ema: float = 0.0
    """Decay (per gradient step) of an exponential moving average of the actor's weights; when
    > 0 the average is the policy that is evaluated, guarded and saved, while the actor itself
    explores (0: off, the actor is the policy)."""
    noise_mode: str = "mean"
    """How the fine-tuned policy picks its noise, in evaluations, the guard and the saved policy:
    sampled (a draw from the noise actor's distribution, as in training) or mean (the actor's mean
    noise, near the base's zero-noise mode early in training; see dpft.finetune.dsrl.steered)."""
    compare_noise_modes: bool = False
    """Also evaluate the other --noise-mode at every evaluation (evals.jsonl: ``also_noise_mode_<other>``),
    to choose a mode from evidence; doubles the evaluation time. The other mode is never deployed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.noise_mode not in SteeredPolicy.NOISE_MODES:
            raise ConfigError(f"unknown --noise-mode {self.noise_mode!r}; available: {list(SteeredPolicy.NOISE_MODES)}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown --variant {self.variant!r}; available: {list(VARIANTS)}")
        if self.init_alpha is None:
            self.init_alpha = 0.01 if self.uses_noise_prior else 1.0
        if self.utd is not None:
            check_utd(self.utd)

    @property
    def uses_noise_prior(self) -> bool:
        return self.variant == "na" and self.noise_prior


def check_target_kl(cfg: DSRLConfig, noise_dim: int) -> None:
    """A policy bounded to |w_i| <= m cannot get closer to N(0, I) than N(0, I) truncated to the
    box, -log P(|z| <= m) nats per coordinate; below that the temperature would grow forever."""
    floor = noise_dim * -math.log(math.erf(cfg.action_magnitude / math.sqrt(2)))
    if cfg.uses_noise_prior and cfg.target_kl <= floor:
        raise ConfigError(
            f"--target-kl {cfg.target_kl} cannot be reached: a noise of {noise_dim} coordinates bounded by "
            f"--action-magnitude {cfg.action_magnitude} is at least {floor:.1f} nats from N(0, I); "
            "choose a larger --target-kl (default 12) or --action-magnitude"
        )


class DSRL(SB3Method):
    """DSRL on the shared run loop: the agent's action is the base's initial noise."""

    command = "finetune dsrl"
    config_cls = DSRLConfig
    # Settings added after runs were already being made, with the behaviour such a run had before
    # them. Resuming an older run must go on training the way it started, not with today's defaults.
    before_key_existed = {
        "noise_prior": False,
        "distill_policy_noise": False,
        "distill_within_weight": 0.0,
        "q_scaled_temperature": False,
        "critic_warmup_steps": 0,
        "noise_mode": "mean",
        "layer_norm": False,
        "utd": 1.0,
    }

    def check(self, cfg: DSRLConfig, base: Policy) -> None:
        check_target_kl(cfg, int(np.prod(base.noise_shape)))

    def warmups(self, cfg: DSRLConfig) -> dict[str, int]:
        return {"warmup_steps": cfg.warmup_steps, "critic_warmup_steps": cfg.critic_warmup_steps}

    def env_steps_per_transition(self, cfg: DSRLConfig, base: Policy) -> int:
        return base.action_horizon

    def make_env(self, cfg: DSRLConfig, base: Policy) -> NoiseActionEnv:
        distill = cfg.na.distill_samples if cfg.variant == "na" else 0
        chunked = cfg.make_chunked(base)
        return NoiseActionEnv(chunked, base, cfg.action_magnitude, distill, task_defines_success(cfg.task))

    def wrap_vec_env(self, cfg: DSRLConfig, base: Policy, venv):
        return NoiseVecEnv(venv)  # one base call per vector step for all envs

    def algorithm(self, cfg: DSRLConfig) -> type[DSRLSAC]:
        return VARIANTS[cfg.variant]

    def new_model(self, cfg: DSRLConfig, base: Policy, venv) -> DSRLSAC:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        k = base.action_horizon
        return VARIANTS[cfg.variant](
            LayerNormSACPolicy,
            venv,
            learning_rate=cfg.lr,
            buffer_size=max(cfg.steps // k + 1, 1000),
            learning_starts=cfg.warmup_steps // k,
            batch_size=cfg.batch_size,
            gamma=cfg.gamma**k,
            **update_frequency(cfg.utd, cfg.envs),
            target_entropy=-cfg.target_kl if cfg.uses_noise_prior else cfg.target_entropy,
            ent_coef=f"auto_{cfg.init_alpha}",
            policy_kwargs={
                "net_arch": [cfg.hidden] * cfg.layers,
                "n_critics": cfg.critics,
                "layer_norm": cfg.layer_norm,
                "optimizer_kwargs": optimizer_kwargs(base.device),
            },
            seed=cfg.seed,
            verbose=0,
            device=base.device,
            **schedule_kwargs(cfg, k),
            **variant_kwargs(cfg, base),
        )

    def load_kwargs(self, cfg: DSRLConfig, base: Policy) -> dict[str, Any]:
        # the run's config decides the behaviour, whatever the zip's defaults
        keys = ("base", "noise_prior", "distill_policy_noise", "distill_within_weight", "q_scaled_temperature")
        kept = {k: v for k, v in variant_kwargs(cfg, base).items() if k in keys}
        return {**schedule_kwargs(cfg, base.action_horizon), **kept}

    def artifact(self, model: DSRLSAC, base: Policy, cfg: DSRLConfig) -> SteeredPolicy:
        return steered_from(model, base, cfg)

    def also_evaluate(self, cfg: DSRLConfig, policy: SteeredPolicy) -> dict[str, Policy]:
        if not cfg.compare_noise_modes:
            return {}
        other = next(m for m in SteeredPolicy.NOISE_MODES if m != cfg.noise_mode)
        return {f"noise_mode_{other}": SteeredPolicy(policy.base, policy.actor, {**policy.meta, "noise_mode": other})}

    def callbacks(self, cfg: DSRLConfig, model: DSRLSAC, base: Policy, k: int) -> list[BaseCallback]:
        critics = {"noise_critic": lambda d: _min_q(model.critic, d.observations, d.actions)}
        if isinstance(model, DSRLNA):
            critics["action_critic"] = lambda d: _min_q(model.action_critic, d.observations, d.chunks)
        every = cfg.eval_every
        return [
            *([TemperatureFloor(cfg.min_alpha)] if cfg.min_alpha > 0 else []),
            RecordScalars(k, every, q_statistics(critics)),
            RecordScalars(k, every, _noise_norm),
        ]


def _min_q(critic, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return torch.cat(critic(obs, actions), dim=1).min(dim=1).values


def _noise_norm(cb: BaseCallback) -> dict[str, float]:
    """How far the chosen noise is from the origin (N(0, I) in 32-d: about 5.7)."""
    actions = cb.locals.get("actions")
    return {} if actions is None else {"rollout/noise_norm": float(np.linalg.norm(actions, axis=-1).mean())}


def steered_from(model: DSRLSAC, base: Policy, cfg: DSRLConfig) -> SteeredPolicy:
    """The run's policy: the noise actor, or with ``--actor-ema`` its weight average."""
    actor = SquashedMeanActor.from_sb3(getattr(model.policy, "actor_ema", model.policy.actor)).to(base.device)
    meta = {
        "variant": cfg.variant,
        "task": cfg.task,
        "reward": cfg.reward,
        "action_magnitude": cfg.action_magnitude,
        "hidden": [cfg.hidden] * cfg.layers,
        "noise_mode": cfg.noise_mode,
        "provenance": {"method": "finetune dsrl", "base_source": str(cfg.base), "run": str(cfg.out)},
    }
    return SteeredPolicy(base, actor, meta)


def schedule_kwargs(cfg: DSRLConfig, k: int) -> dict[str, Any]:
    """The critic warm-up in gradient steps, the transitions until the actor's noise is used, and
    the actor's own pace (learning rate, weight average)."""
    return {
        "critic_warmup": gradient_steps_for(cfg.critic_warmup_steps // k, cfg.utd),
        "explore_after": (cfg.warmup_steps + cfg.critic_warmup_steps) // k,
        "actor_lr": cfg.actor_lr,
        "actor_ema": cfg.actor_ema,
    }


def variant_kwargs(cfg: DSRLConfig, base: Policy) -> dict:
    """Constructor arguments only DSRL-NA needs (its action critic and chunk replay buffer)."""
    if cfg.variant != "na":
        return {}
    chunk_dim = base.action_horizon * base.action_dim
    return {
        "base": base,
        "action_horizon": base.action_horizon,
        "chunk_dim": chunk_dim,
        "distill_policy_noise": cfg.na.distill_policy_noise,
        "distill_within_weight": cfg.na.distill_within_weight,
        "noise_prior": cfg.noise_prior,
        "q_scaled_temperature": cfg.q_scaled_temperature,
        "action_critic_kwargs": {
            "net_arch": [cfg.hidden] * cfg.layers,
            "n_critics": cfg.critics,
            "layer_norm": cfg.layer_norm,
        },
        "replay_buffer_class": ChunkReplayBuffer,
        "replay_buffer_kwargs": {
            "chunk_dim": chunk_dim,
            "distill_samples": cfg.na.distill_samples,
            "noise_dim": int(np.prod(base.noise_shape)),
        },
    }


@multi_process
def train_dsrl(cfg: DSRLConfig) -> Path:
    """Fine-tune by steering the base policy's noise (DSRL); returns the steered policy's folder."""
    return run_sb3(cfg, DSRL())
