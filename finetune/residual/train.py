"""``dpft finetune residual``: learn a bounded correction on top of a frozen base policy.

The agent acts in :class:`ResidualVecEnv` (the base runs inside it), so SB3's SAC, TD3 and PPO
train unchanged, on the shared run loop of :mod:`dpft.finetune.common.run` (run folder,
``--resume``, checkpoints, evaluation, TensorBoard). One transition is one env step (per-step
form) or one executed chunk (per-chunk form, discount ``gamma ** action_horizon``). The
artifact is a :class:`ResidualPolicy`; ``dpft eval --policy OUT`` runs it like any other.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from dpft.base_policies.composed import ComposedPolicy
from dpft.base_policies.data import load_demonstrations
from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.registry import multi_process
from dpft.base_policies.infra.run_folder import RunFolder
from dpft.base_policies.policy import Policy
from dpft.base_policies.zero_noise import ZeroNoisePolicy
from dpft.envs.chunking import ReportSuccess
from dpft.envs.tasks import task_defines_success
from dpft.finetune.common.action_spread import SPREAD_SEED, SPREAD_STATES, chunk_spread, residual_scale
from dpft.finetune.common.callbacks import RecordScalars, q_statistics
from dpft.finetune.common.config import FinetuneConfig
from dpft.finetune.common.distributed import current_shard
from dpft.finetune.common.networks import LayerNormSACPolicy, LayerNormTD3Policy
from dpft.finetune.common.normalize import RewardNormalizer
from dpft.finetune.common.presets import with_settings
from dpft.finetune.common.run import SB3Method, run_sb3
from dpft.finetune.common.updates import check_utd, gradient_steps_for, optimizer_kwargs, update_frequency
from dpft.finetune.residual.algos import ResidualSAC, ResidualTD3
from dpft.finetune.residual.demos import DemoMixReplayBuffer, demo_buffer, residual_transitions
from dpft.finetune.residual.env import ResidualVecEnv
from dpft.finetune.residual.policy import FORMS, Features, ResidualNet, ResidualPolicy

ALGOS: dict[str, type[BaseAlgorithm]] = {"sac": ResidualSAC, "td3": ResidualTD3, "ppo": PPO}
BASE_NOISES = ("normal", "zero")
DEMOS_BC_ALPHA = 2.5
"""TD3's BC weight when --demos is given and --td3.bc-alpha is not (TD3+BC's own value)."""


@dataclass
class TD3Options:
    """Residual-TD3's own settings."""

    RANGES: ClassVar[dict[str, str]] = {"action_noise": ">= 0", "bc_alpha": ">= 0"}
    action_noise: float = 0.1
    """Std of the Gaussian exploration noise on r."""
    bc_alpha: float | None = None
    """TD3+BC: when > 0 the actor minimises -bc_alpha * Q / mean|Q| + (r - r_replay)^2, staying near
    the corrections that were run or demonstrated instead of the critic's untested extremes (0: TD3's
    own actor loss). Default: 2.5 (TD3+BC's) with --demos, 0 without; with demonstrations the learning
    curve no longer collapsed after the actor started, without them the term did worse than plain TD3
    (experiments/results/residual_bench.md)."""


@dataclass
class SACOptions:
    """Residual-SAC's own settings."""

    RANGES: ClassVar[dict[str, str]] = {"init_alpha": "> 0"}
    init_alpha: float = 0.1
    """Initial entropy temperature (tuned toward -action_dim entropy)."""


@dataclass
class PPOOptions:
    """Residual-PPO's own settings (ResiP runs PPO: many envs, use --envs 8 or more)."""

    RANGES: ClassVar[dict[str, str]] = {
        "rollout_steps": ">= 1",
        "epochs": ">= 1",
        "target_kl": ">= 0",
        "gae_lambda": "[0, 1]",
        "clip_range": "> 0",
        "log_std_init": "any",
        "ent_coef": ">= 0",
    }
    rollout_steps: int = 256
    """Transitions per env between updates."""
    epochs: int = 10
    """Passes over each rollout."""
    target_kl: float = 0.02
    """Stop an update's epochs early past this KL (0: never)."""
    normalize_reward: bool = True
    """Scale rewards by a running std of the discounted return."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """Ratio clipping."""
    log_std_init: float = -1.0
    """Initial log std of r (small: the base explores enough)."""
    ent_coef: float = 0.0
    """Entropy bonus."""


@dataclass
class ResidualConfig(FinetuneConfig):
    """Fine-tune a frozen diffusion/flow (or DSRL) policy with a learned residual correction."""

    RANGES: ClassVar[dict[str, str]] = {
        "residual_scale": "(0, 1]",
        "hidden": ">= 1",
        "layers": ">= 1",
        "lr": "(0, 1]",
        "gamma": "[0, 1]",
        "batch_size": ">= 1",
        "warmup_steps": ">= 0",
        "critic_warmup_steps": ">= 0",
        "explore_ramp_steps": ">= 0",
        "utd": "> 0",
        "n_step": ">= 1",
        "critics": ">= 1",
        "demo_ratio": "[0, 1)",
    }
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""
    MOVED: ClassVar[dict[str, str]] = {
        **{f.name: f"ppo.{f.name}" for f in fields(PPOOptions)},
        "init_alpha": "sac.init_alpha",
        "action_noise": "td3.action_noise",
    }
    """Settings that were flat before the per-algorithm groups: a config file or a run's
    config.yaml that names them flat still reads (dpft.base_policies.infra.records)."""

    out: Path = Path("runs/residual")
    """Run folder; the residual policy is written to OUT/policy."""
    algo: str = "td3"
    """td3 or sac (off-policy), ppo (on-policy). TD3 is the default: on Meta-World push with a sparse
    reward it beat SAC clearly (experiments/results/residual_bench.md)."""
    form: str = "step"
    """step: correct every executed action (ResiP); chunk: correct a whole chunk at its start (Policy Decorator)."""
    base_noise: str = "normal"
    """The base's initial noise: normal (a fresh N(0, I) draw for every chunk, as the base was trained)
    or zero (the base at its mode, dpft/base_policies/zero_noise.py: the residual then corrects one
    deterministic behaviour; worth it where `dpft steerability` shows the zero noise beating N(0, I)
    noise, wrong where the zero noise fails). A base that picks its own noise (DSRL) refuses it."""
    residual_scale: float | None = None
    """Largest correction, as a share of half the action range, in (0, 1] (default: on a task that
    reports success measured, the base's spread across initial noises at one observation as such a
    share, clamped to [0.05, 1], finetune/common/action_spread.py; on one that does not, 1, the
    full range: preset 'return', finetune/common/presets.py)."""
    steps: int = 100_000
    """Environment-step budget."""
    hidden: int = 256
    """Width of actor and critic layers."""
    layers: int = 2
    """Number of hidden layers of actor and critic."""
    lr: float = 3e-4
    """Learning rate."""
    gamma: float = 0.99
    """Per-environment-step discount."""
    batch_size: int = 128
    """Batch size of a gradient step (PPO: minibatch size); 128 in every residual benchmark row."""
    # ----- off-policy (sac, td3) -----
    warmup_steps: int = 5000
    """sac/td3: env steps collected with the base alone (r = 0) before learning starts."""
    critic_warmup_steps: int = 5000
    """sac/td3: env steps after the warm-up during which only the critic learns (on the base's own
    actions, r = 0; SAC's critic targets still sample its initial, wide policy)."""
    explore_ramp_steps: int = 10_000
    """sac/td3: env steps over which the share of actions that use the residual ramps from 0 to 1
    (after the critic warm-up); 0 uses the residual from the start."""
    utd: float = 1.0
    """sac/td3: gradient steps per collected transition (update-to-data ratio): 1, 2, ... or 0.5
    (one update every 2 transitions)."""
    n_step: int = 3
    """sac/td3: n-step returns for the critic's target (3 in every residual benchmark row)."""
    critics: int = 2
    """sac/td3: size of the critic ensemble (targets use the minimum)."""
    layer_norm: bool = True
    """sac/td3: LayerNorm after every hidden layer of the critics."""
    demos: Path | None = None
    """sac/td3: a demonstration file (robomimic HDF5 from `dpft collect`, ...) mixed into every batch
    (RLPD / ResFiT): each demonstrated action becomes the correction the residual would have needed
    on top of the base (finetune/residual/demos.py)."""
    demo_ratio: float = 0.5
    """sac/td3 with --demos: share of each batch drawn from the demonstrations."""
    td3: TD3Options = field(default_factory=TD3Options)
    """--algo td3 only (--td3.*)."""
    sac: SACOptions = field(default_factory=SACOptions)
    """--algo sac only (--sac.*)."""
    ppo: PPOOptions = field(default_factory=PPOOptions)
    """--algo ppo only (--ppo.*)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.algo not in ALGOS:
            raise ConfigError(f"unknown --algo {self.algo!r}; choose one of {list(ALGOS)}")
        if self.form not in FORMS:
            raise ConfigError(f"unknown --form {self.form!r}; choose one of {list(FORMS)}")
        if self.base_noise not in BASE_NOISES:
            raise ConfigError(f"unknown --base-noise {self.base_noise!r}; choose one of {list(BASE_NOISES)}")
        check_utd(self.utd)
        if self.demos is not None and (self.algo == "ppo" or self.form != "step"):
            raise ConfigError("--demos needs an off-policy per-step residual (--algo td3 or sac, --form step)")
        if self.td3.bc_alpha is None:
            self.td3 = replace(self.td3, bc_alpha=DEMOS_BC_ALPHA if self.demos is not None else 0.0)


class Residual(SB3Method):
    """Residual RL on the shared run loop: the agent's action is the correction ``r``."""

    command = "finetune residual"
    config_cls = ResidualConfig
    preset_family = "residual"

    def frozen_base(self, cfg: ResidualConfig, base: Policy) -> Policy:
        if cfg.base_noise != "zero":
            return base
        if base.chooses_noise:
            raise ConfigError(
                f"--base-noise zero: the base {cfg.base} picks its own initial noise (a DSRL or zero-noise policy), "
                "so there is no noise to set; drop --base-noise"
            )
        return ZeroNoisePolicy(base)

    def measure(self, cfg: ResidualConfig, base: Policy) -> tuple[ResidualConfig, str | None]:
        if cfg.residual_scale is not None:
            return cfg, None
        denoiser = innermost_base(base)
        spread = chunk_spread(denoiser, replace(cfg, seed=SPREAD_SEED, envs=1), SPREAD_STATES)
        cfg = with_settings(cfg, residual_scale=residual_scale(spread))
        return cfg, (
            f"residual scale {cfg.residual_scale}: the {'' if denoiser is base else 'underlying '}"
            "base's action spread across initial noises "
            f"({float(spread.within.mean()):.3f} env units on {SPREAD_STATES} zero-noise episodes) as a share of half "
            "the action range; override with --residual-scale"
        )

    def warmups(self, cfg: ResidualConfig) -> dict[str, int]:
        if cfg.algo == "ppo":
            return {}
        return {"warmup_steps": cfg.warmup_steps, "critic_warmup_steps": cfg.critic_warmup_steps}

    def check(self, cfg: ResidualConfig, base: Policy) -> None:
        # a resumed run reads its demonstrations from the checkpoint's replay, not from the file
        resumed = cfg.resume and RunFolder(Path(cfg.out)).has_checkpoint()
        if cfg.demos is not None and not resumed and not Path(cfg.demos).exists():
            raise ConfigError(f"--demos {cfg.demos} does not exist")

    def check_processes(self, cfg: ResidualConfig, world: int) -> None:
        if cfg.algo == "ppo" and cfg.ppo.target_kl:
            raise ConfigError(
                f"residual PPO on {world} processes needs --ppo.target-kl 0: each process would stop its epochs at its "
                "own KL, and the processes' updates would fall out of step"
            )

    def __init__(self) -> None:
        self.wrapper: ResidualVecEnv | None = None

    def env_steps_per_transition(self, cfg: ResidualConfig, base: Policy) -> int:
        return 1 if cfg.form == "step" else base.action_horizon

    def make_env(self, cfg: ResidualConfig, base: Policy) -> gym.Env:
        h = self.env_steps_per_transition(cfg, base)
        env = cfg.make_chunked((base.obs_horizon, h, h))
        return ReportSuccess(env) if task_defines_success(cfg.task) else env

    def wrap_vec_env(self, cfg: ResidualConfig, base: Policy, venv: VecEnv) -> VecEnv:
        low, high = venv.action_space.low[0], venv.action_space.high[0]
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ConfigError(
                f"task {cfg.task!r} has unbounded actions; a residual's correction is a share of the action range, "
                "so it needs a bounded action space"
            )
        features = Features.for_base(base, torch.as_tensor(low), torch.as_tensor(high))
        self.wrapper = ResidualVecEnv(venv, base, cfg.form, cfg.residual_scale, features, cfg.seed)
        if cfg.algo == "ppo" and cfg.ppo.normalize_reward:
            return RewardNormalizer(self.wrapper, cfg.gamma ** self.env_steps_per_transition(cfg, base))
        return self.wrapper

    def algorithm(self, cfg: ResidualConfig) -> type[BaseAlgorithm]:
        return ALGOS[cfg.algo]

    def new_model(self, cfg: ResidualConfig, base: Policy, venv: VecEnv) -> BaseAlgorithm:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        k = self.env_steps_per_transition(cfg, base)
        common = {"learning_rate": cfg.lr, "gamma": cfg.gamma**k, "seed": cfg.seed, "verbose": 0, "device": base.device}
        if cfg.algo == "ppo":
            model = PPO(
                "MlpPolicy",
                venv,
                n_steps=cfg.ppo.rollout_steps,
                batch_size=cfg.batch_size,
                n_epochs=cfg.ppo.epochs,
                gae_lambda=cfg.ppo.gae_lambda,
                clip_range=cfg.ppo.clip_range,
                ent_coef=cfg.ppo.ent_coef,
                target_kl=cfg.ppo.target_kl or None,
                policy_kwargs={
                    "net_arch": {"pi": [cfg.hidden] * cfg.layers, "vf": [cfg.hidden] * cfg.layers},
                    "log_std_init": cfg.ppo.log_std_init,
                },
                **common,
            )
            _zero(model.policy.action_net)
            return model
        off_policy = {
            "buffer_size": max(cfg.steps // k + 1, 1000),
            "learning_starts": cfg.warmup_steps // k,
            "batch_size": cfg.batch_size,
            **update_frequency(cfg.utd, cfg.envs),
            **self.buffer_kwargs(cfg, cfg.gamma**k),
            "policy_kwargs": {
                "net_arch": [cfg.hidden] * cfg.layers,
                "n_critics": cfg.critics,
                "layer_norm": cfg.layer_norm,
                "optimizer_kwargs": optimizer_kwargs(base.device),
            },
        }
        if cfg.algo == "sac":
            model = ResidualSAC(LayerNormSACPolicy, venv, ent_coef=f"auto_{cfg.sac.init_alpha}", **off_policy, **common)
            _zero(model.policy.actor.mu)
        else:
            dim = venv.action_space.shape[0]
            noise = NormalActionNoise(np.zeros(dim), cfg.td3.action_noise * np.ones(dim))
            model = ResidualTD3(LayerNormTD3Policy, venv, action_noise=noise, **off_policy, **common)
            _zero(_linears(model.policy.actor.mu)[-1])
            model.policy.actor_target.load_state_dict(model.policy.actor.state_dict())
        for key, value in self.schedules(cfg, base).items():
            setattr(model, key, value)
        if cfg.demos is not None:
            self.add_demos(cfg, base, model)
        return model

    def buffer_kwargs(self, cfg: ResidualConfig, gamma: float) -> dict[str, Any]:
        if cfg.demos is None:
            return {"n_steps": cfg.n_step}
        kwargs = {"n_steps": cfg.n_step, "gamma": gamma}  # a custom buffer class takes n-step settings here
        return {"replay_buffer_class": DemoMixReplayBuffer, "replay_buffer_kwargs": kwargs}

    def add_demos(self, cfg: ResidualConfig, base: Policy, model: BaseAlgorithm) -> None:
        """The demonstrations as residual transitions in a buffer of their own (a resumed run
        unpickles them with the replay buffer)."""
        episodes = load_demonstrations(cfg.demos).episodes
        features = copy.deepcopy(self.wrapper.features).cpu()
        demos = residual_transitions(episodes, base, features, self.wrapper.scale, cfg.reward, cfg.seed)
        buf = model.replay_buffer
        spaces = model.observation_space, model.action_space
        buf.demos = demo_buffer(demos, *spaces, model.device, cfg.n_step, model.gamma)
        buf.demo_ratio = cfg.demo_ratio
        if current_shard().is_main:
            print(
                f"demos: {len(demos)} transitions from {len(episodes)} episodes of {cfg.demos} "
                f"({demos.clipped:.0%} of correction coordinates clipped), {cfg.demo_ratio:.0%} of each batch"
            )
            if demos.clipped > 0.5:
                print(
                    "note: most demonstrated actions are beyond the residual's reach (--residual-scale "
                    f"{self.wrapper.scale:g} of the half action range from the base's); a larger scale "
                    "lets it follow them"
                )

    def schedules(self, cfg: ResidualConfig, base: Policy) -> dict[str, float]:
        """The off-policy warm-up schedules in the algorithm's units (updates, transitions), and
        TD3's BC weight."""
        if cfg.algo == "ppo":
            return {}
        k = self.env_steps_per_transition(cfg, base)
        return {
            "critic_warmup": gradient_steps_for(cfg.critic_warmup_steps // k, cfg.utd),
            "explore_after": (cfg.warmup_steps + cfg.critic_warmup_steps) // k,
            "explore_ramp": cfg.explore_ramp_steps // k,
            **({"bc_alpha": cfg.td3.bc_alpha} if cfg.algo == "td3" else {}),
        }

    def load_kwargs(self, cfg: ResidualConfig, base: Policy) -> dict[str, Any]:
        return self.schedules(cfg, base)  # the run config decides, whatever the zip holds

    def artifact(self, model: BaseAlgorithm, base: Policy, cfg: ResidualConfig) -> ResidualPolicy:
        meta = {
            "form": cfg.form,
            "scale": cfg.residual_scale,
            "task": cfg.task,
            "reward": cfg.reward,
            "algo": cfg.algo,
            "provenance": {"method": "finetune residual", "base_source": str(cfg.base), "run": str(cfg.out)},
        }
        return ResidualPolicy(base, net_from_sb3(model, self.wrapper.features, cfg.algo), meta)

    def callbacks(self, cfg: ResidualConfig, model: BaseAlgorithm, base: Policy, k: int) -> list[BaseCallback]:
        out = [RecordScalars(k, cfg.eval_every, lambda cb: self.wrapper.pop_stats())]
        if cfg.algo != "ppo":
            critic = model.critic
            q = {"critic": lambda d: torch.cat(critic(d.observations, d.actions), dim=1).min(dim=1).values}
            out.append(RecordScalars(k, cfg.eval_every, q_statistics(q)))
        return out


def innermost_base(policy: Policy) -> Policy:
    """The diffusion/flow policy under a steered or residual policy (itself for a plain one): a
    steered policy's chunks hardly vary with the noise it is given, so a residual on top of DSRL
    is sized by the spread of the policy DSRL steers."""
    while isinstance(policy, ComposedPolicy):
        policy = policy.base
    return policy


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _zero(layer: nn.Module) -> None:
    """The residual's output layer starts at zero: step 0 is the base, bit for bit."""
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()


def net_from_sb3(model: BaseAlgorithm, features: Features, algo: str) -> ResidualNet:
    """The deterministic residual of an SB3 model as a plain :class:`ResidualNet`."""
    policy = model.policy
    if algo == "sac":
        linears, activation, output = [*_linears(policy.actor.latent_pi), policy.actor.mu], "relu", "tanh"
    elif algo == "td3":
        linears, activation, output = _linears(policy.actor.mu), "relu", "tanh"
    else:
        linears, activation, output = [*_linears(policy.mlp_extractor.policy_net), policy.action_net], "tanh", "clip"
    hidden = [m.out_features for m in linears[:-1]]
    net = ResidualNet(features, linears[0].in_features, hidden, linears[-1].out_features, activation, output)
    for mine, theirs in zip(_linears(net.mlp) + [net.head], linears):
        mine.load_state_dict(theirs.state_dict())
    return net.to(features.obs_mean.device).eval()


@multi_process
def train_residual(cfg: ResidualConfig) -> Path:
    """Fine-tune a residual correction on top of the frozen base; returns the policy's folder."""
    return run_sb3(cfg, Residual())
