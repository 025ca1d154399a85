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

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv
from tqdm import tqdm

from dpft.base_policies import load_policy
from dpft.base_policies.errors import CheckpointError, ConfigError
from dpft.base_policies.run_folder import RunFolder
from dpft.base_policies.state_io import atomic_dir, atomic_write_text, load_state, rng_state, save_state, set_rng_state
from dpft.envs.chunking import ChunkedEnv, check_policy_fits
from dpft.envs.config import EnvConfig
from dpft.envs.tasks import task_defines_success
from dpft.finetune.dsrl.na import DSRLNA
from dpft.finetune.dsrl.networks import DSRLPolicy
from dpft.finetune.dsrl.noise_env import NoiseActionEnv
from dpft.finetune.dsrl.replay import ChunkReplayBuffer
from dpft.finetune.dsrl.sac import DSRLSAC
from dpft.finetune.dsrl.steered import SteeredPolicy
from dpft.finetune.eval_log import append_eval, trim_evals
from dpft.finetune.evaluate import evaluate
from dpft.base_policies.sb3_actor import SquashedMeanActor

VARIANTS = {"sac": DSRLSAC, "na": DSRLNA}
# Settings added after runs were already being made, with the behaviour such a run had before
# them. Resuming an older run must go on training the way it started, not with today's defaults.
BEFORE_KEY_EXISTED = {"noise_prior": False, "distill_policy_noise": False, "distill_within_weight": 0.0}


@dataclass
class DSRLConfig(EnvConfig):
    """Fine-tune a frozen diffusion/flow policy with DSRL (RL over its initial noise)."""

    base: str = "shipped:metaworld-push-v3"
    """Base policy folder, run folder, or shipped:<name>. Its weights never change."""
    task: str | None = None  # type: ignore[assignment]
    """Task id (default: the task the base policy was trained for)."""
    envs: int = 1
    """Parallel environments (SB3 DummyVecEnv)."""
    out: Path = Path("runs/dsrl")
    """Run folder; the steered policy is written to OUT/policy."""
    variant: str = "na"
    """na: noise aliasing (action-chunk critic distilled into a noise critic); sac: noise-space SAC."""
    steps: int = 50_000
    """Environment-step budget (transitions are chunks of action_horizon steps)."""
    action_magnitude: float = 1.5
    """Bound on each noise coordinate chosen by the agent."""
    hidden: int = 256
    """Width of actor and critic layers."""
    layers: int = 2
    """Number of hidden layers of actor and critic."""
    layer_norm: bool = False
    """LayerNorm after every hidden layer of the critics."""
    critics: int = 2
    """Size of the critic ensemble (the TD target and the actor use the minimum over it)."""
    distill_samples: int = 4
    """na: N(0, I) noises denoised per collected transition for distilling the noise critic."""
    distill_policy_noise: bool = True
    """na: also distil the noise critic on the actor's own noise (the chunks the TD target denoises anyway)."""
    distill_within_weight: float = 0.0
    """na: extra weight on the noise critic's error across noises within a state (what the actor follows)."""
    utd: int = 1
    """Gradient steps per collected transition (update-to-data ratio)."""
    target_entropy: float = 0.0
    """SAC target entropy (per noise vector); not used by na with --noise-prior."""
    noise_prior: bool = True
    """na: regularise toward the base's own N(0, I) noise (a KL penalty) instead of maximising entropy."""
    target_kl: float = 12.0
    """na with --noise-prior: the temperature is tuned toward this KL(noise policy || N(0, I)) per decision."""
    init_alpha: float | None = None
    """Initial temperature (default: 0.01 for na with --noise-prior, which then only has to rise
    if the noise drifts too far; 1.0, SB3's default, otherwise)."""
    min_alpha: float = 0.0
    """Floor on the entropy temperature (guards against the collapse seen when alpha decays)."""
    warmup_steps: int = 2000
    """Environment steps collected with the base policy's own N(0, I) noise before learning."""
    gamma: float = 0.99
    """Per-environment-step discount."""
    batch_size: int = 256
    """SAC batch size."""
    lr: float = 3e-4
    """Learning rate of actor, critic and temperature."""
    eval_every: int = 5000
    """Environment steps between evaluations of the steered policy."""
    eval_episodes: int = 20
    """Episodes per evaluation."""
    checkpoint_every: int = 10_000
    """Environment steps between atomic checkpoints (what --resume continues from)."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown --variant {self.variant!r}; available: {list(VARIANTS)}")
        if self.init_alpha is None:
            self.init_alpha = 0.01 if self.uses_noise_prior else 1.0
        if self.action_magnitude <= 0 or self.steps < 1 or self.utd < 1 or self.init_alpha <= 0:
            raise ConfigError("--action-magnitude, --steps, --utd and --init-alpha must be positive")
        if self.critics < 1 or self.distill_samples < 0:
            raise ConfigError("--critics must be at least 1 and --distill-samples at least 0")

    @property
    def uses_noise_prior(self) -> bool:
        return self.variant == "na" and self.noise_prior


class EnvStepLogger(Logger):
    """SB3's logger with environment steps, not chunk transitions, on TensorBoard's x axis."""

    def __init__(self, folder: Path, env_steps_per_transition: int) -> None:
        super().__init__(str(folder), [TensorBoardOutputFormat(str(folder))])
        self.k = env_steps_per_transition

    def dump(self, step: int = 0) -> None:
        super().dump(step * self.k)


def steered_from(model: SAC, base, cfg: DSRLConfig) -> SteeredPolicy:
    actor = SquashedMeanActor.from_sb3(model.policy.actor)
    meta = {"variant": cfg.variant, "hidden": [cfg.hidden] * cfg.layers, "task": cfg.task, "base_source": str(cfg.base)}
    return SteeredPolicy(base, actor, cfg.action_magnitude, meta)


class DSRLCallback(BaseCallback):
    """Progress bar, alpha floor, periodic evaluation (TensorBoard eval/* and ``evals.jsonl``)
    and checkpoints. Wall-clock time is counted across resumes."""

    def __init__(self, cfg: DSRLConfig, run: RunFolder, base, env_steps_per_transition: int, wall_s: float = 0.0):
        super().__init__()
        self.cfg, self.run, self.base, self.k = cfg, run, base, env_steps_per_transition
        self.next_eval = self.next_ckpt = 0
        self.t0 = time.perf_counter()
        self.wall_before = wall_s
        self.last_success: float | None = None

    @property
    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def _on_training_start(self) -> None:
        env_steps = self.num_timesteps * self.k
        self.evals_path = self.run.root / "evals.jsonl"
        trim_evals(self.evals_path, env_steps)
        self.next_eval = (env_steps // self.cfg.eval_every + 1) * self.cfg.eval_every
        self.next_ckpt = (env_steps // self.cfg.checkpoint_every + 1) * self.cfg.checkpoint_every
        self.start_steps, self.start_updates = env_steps, self.model._n_updates
        self.bar = tqdm(
            total=self.cfg.steps, initial=env_steps, disable=not self.cfg.progress, desc="dsrl", unit="env step"
        )

    def _on_step(self) -> bool:
        env_steps = self.num_timesteps * self.k
        self.bar.update(env_steps - self.bar.n)  # tqdm throttles redraws itself
        if self.cfg.min_alpha > 0 and self.model.log_ent_coef is not None:
            with torch.no_grad():
                self.model.log_ent_coef.clamp_(min=math.log(self.cfg.min_alpha))
        if env_steps >= self.next_eval:
            self.next_eval += self.cfg.eval_every
            summary = self.evaluate()
            row = {k: summary[k] for k in ("success_rate", "return_mean", "episodes")}
            append_eval(self.evals_path, {"env_steps": env_steps, **row, "wall_s": round(self.wall_s, 1)})
            self.logger.record("eval/return_mean", summary["return_mean"])
            if summary["success_rate"] is not None:
                self.logger.record("eval/success_rate", summary["success_rate"])
                self.last_success = summary["success_rate"]
                self.bar.set_postfix(success=f"{self.last_success:.2f}")
            elapsed = time.perf_counter() - self.t0
            self.logger.record("time/env_steps_per_s", (env_steps - self.start_steps) / elapsed)
            self.logger.record("time/grad_steps_per_s", (self.model._n_updates - self.start_updates) / elapsed)
            self.logger.record("rollout/noise_norm", float(np.linalg.norm(self.locals["actions"], axis=-1).mean()))
            self.record_q_stats()
            self.logger.dump(self.num_timesteps)
        if env_steps >= self.next_ckpt:
            self.next_ckpt += self.cfg.checkpoint_every
            save_checkpoint(self.model, self.run, self.wall_s)
        return True

    @torch.no_grad()
    def record_q_stats(self) -> None:
        """Q statistics on a replay batch: the noise critic's (both variants) and, for NA, the action critic's."""
        if self.model.replay_buffer.size() == 0:
            return
        data = self.model.replay_buffer.sample(256)
        q = torch.cat(self.model.critic(data.observations, data.actions), dim=1).min(dim=1).values
        self.logger.record("q/noise_critic_mean", q.mean().item())
        self.logger.record("q/noise_critic_max", q.max().item())
        if isinstance(self.model, DSRLNA):
            qa = torch.cat(self.model.action_critic(data.observations, data.chunks), dim=1).min(dim=1).values
            self.logger.record("q/action_critic_mean", qa.mean().item())
            self.logger.record("q/action_critic_max", qa.max().item())

    def evaluate(self) -> dict:
        policy = steered_from(self.model, self.base, self.cfg)
        eval_cfg = replace(self.cfg, envs=min(8, self.cfg.eval_episodes), seed=self.cfg.seed + 1_000_000)
        return evaluate(policy, eval_cfg, self.cfg.eval_episodes)

    def _on_training_end(self) -> None:
        self.bar.close()


def save_checkpoint(model: SAC, run: RunFolder, wall_s: float = 0.0) -> None:
    """Atomically write model, optimisers, replay buffer, counters and RNG state.

    SB3's own zip and replay-buffer files are used here (they pickle some objects); they are
    training state read only by ``--resume``, never a policy artifact."""
    with atomic_dir(run.checkpoint_dir) as tmp:
        model.save(tmp / "sac.zip")
        model.save_replay_buffer(tmp / "replay.pkl")
        save_state(tmp, {"num_timesteps": model.num_timesteps, "wall_s": wall_s, "rng": rng_state()})


def make_env_fn(cfg: DSRLConfig, base):
    distill = cfg.distill_samples if cfg.variant == "na" else 0
    success = task_defines_success(cfg.task)

    def make():
        chunked = ChunkedEnv(cfg.make_env(), base.obs_horizon, base.pred_horizon, base.action_horizon)
        return Monitor(NoiseActionEnv(chunked, base, cfg.action_magnitude, distill, success))

    return make


def variant_kwargs(cfg: DSRLConfig, base) -> dict:
    """Constructor arguments only DSRL-NA needs (its action critic and chunk replay buffer)."""
    if cfg.variant != "na":
        return {}
    chunk_dim = base.action_horizon * base.action_dim
    return {
        "base": base,
        "action_horizon": base.action_horizon,
        "chunk_dim": chunk_dim,
        "distill_policy_noise": cfg.distill_policy_noise,
        "distill_within_weight": cfg.distill_within_weight,
        "noise_prior": cfg.noise_prior,
        "action_critic_kwargs": {
            "net_arch": [cfg.hidden] * cfg.layers,
            "n_critics": cfg.critics,
            "layer_norm": cfg.layer_norm,
        },
        "replay_buffer_class": ChunkReplayBuffer,
        "replay_buffer_kwargs": {
            "chunk_dim": chunk_dim,
            "distill_samples": cfg.distill_samples,
            "noise_dim": int(np.prod(base.noise_shape)),
        },
    }


def new_model(cfg: DSRLConfig, base, venv) -> DSRLSAC:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    k = base.action_horizon
    return VARIANTS[cfg.variant](
        DSRLPolicy,
        venv,
        learning_rate=cfg.lr,
        buffer_size=max(cfg.steps // k + 1, 1000),
        learning_starts=cfg.warmup_steps // k,
        batch_size=cfg.batch_size,
        gamma=cfg.gamma**k,
        train_freq=1,
        gradient_steps=cfg.utd * cfg.envs,
        target_entropy=-cfg.target_kl if cfg.uses_noise_prior else cfg.target_entropy,
        ent_coef=f"auto_{cfg.init_alpha}",
        policy_kwargs={"net_arch": [cfg.hidden] * cfg.layers, "n_critics": cfg.critics, "layer_norm": cfg.layer_norm},
        seed=cfg.seed,
        verbose=0,
        **variant_kwargs(cfg, base),
    )


def load_model(cfg: DSRLConfig, base, venv, run: RunFolder) -> tuple[DSRLSAC, float]:
    """The checkpointed model, optimisers, replay buffer and RNG state (plus the wall-clock
    seconds trained so far), or one clear error."""
    try:
        extra = {}
        if cfg.variant == "na":  # the run's config decides the behaviour, whatever the zip's defaults
            keys = ("base", "noise_prior", "distill_policy_noise", "distill_within_weight")
            extra = {k: v for k, v in variant_kwargs(cfg, base).items() if k in keys}
        model = VARIANTS[cfg.variant].load(run.checkpoint_dir / "sac.zip", env=venv, **extra)
        model.load_replay_buffer(run.checkpoint_dir / "replay.pkl")
    except Exception as e:  # SB3 raises zipfile/pickle/KeyError/... on damaged files
        raise CheckpointError(
            f"cannot resume from {run.checkpoint_dir} ({type(e).__name__}: {e}); the checkpoint is damaged -- "
            "start a new run with another --out"
        ) from None
    state = load_state(run.checkpoint_dir)
    set_rng_state(state["rng"])
    return model, float(state.get("wall_s", 0.0))


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


def train_dsrl(cfg: DSRLConfig) -> Path:
    run = RunFolder(cfg.out)
    if cfg.resume:
        cfg = replace(run.read_config(DSRLConfig, BEFORE_KEY_EXISTED), resume=True, progress=cfg.progress)
    elif run.has_checkpoint():
        raise ConfigError(f"{cfg.out} already holds a run; pass --resume to continue it or choose another --out")
    base = load_policy(cfg.base)
    cfg = replace(cfg, task=cfg.task or (base.config.task if base.config else None))
    if not cfg.task:
        raise ConfigError("the base policy does not record its task; pass --task")
    probe = cfg.make_env()
    check_policy_fits(base, probe, cfg.task)
    check_target_kl(cfg, int(np.prod(base.noise_shape)))
    probe.close()
    run.write_config(cfg)
    k = base.action_horizon
    venv = DummyVecEnv([make_env_fn(cfg, base)] * cfg.envs)
    venv.seed(cfg.seed)
    if cfg.resume and run.has_checkpoint():
        model, wall_s = load_model(cfg, base, venv, run)
        reset = False
    else:
        model, wall_s = new_model(cfg, base, venv), 0.0
        reset = True
        run.writer(cfg).close()  # the full config as TensorBoard text
    model.set_logger(EnvStepLogger(run.tb_dir, k))
    callback = DSRLCallback(cfg, run, base, k, wall_s)
    total = math.ceil(cfg.steps / k)
    try:
        model.learn(
            total_timesteps=total - (0 if reset else model.num_timesteps),
            callback=callback,
            reset_num_timesteps=reset,
            tb_log_name="sac",
            progress_bar=False,
        )
    except KeyboardInterrupt:
        save_checkpoint(model, run, callback.wall_s)
        raise KeyboardInterrupt(
            f"interrupted at {model.num_timesteps * k} env steps; continue with: dpft finetune dsrl --out {cfg.out} "
            "--resume"
        ) from None
    save_checkpoint(model, run, callback.wall_s)
    steered = steered_from(model, base, cfg)
    steered.save(run.policy_dir)
    final = {**callback.evaluate(), "env_steps": model.num_timesteps * k, "train_wall_s": round(callback.wall_s, 1)}
    atomic_write_text(run.root / "final_eval.json", json.dumps(final, indent=2))
    print(
        f"steered policy saved to {run.policy_dir}; final eval: success {final['success_rate']}, "
        f"return {final['return_mean']:.1f} over {final['episodes']} episodes"
    )
    return run.policy_dir
