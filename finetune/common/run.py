"""The shared run loop of every fine-tuning method built on a stable-baselines3 algorithm.

A method supplies an :class:`SB3Method` (its config class, the env its agent acts in, the
algorithm, the artifact); :func:`run_sb3` does everything else, identically for every method:

1. open the run folder, or re-read its ``config.yaml`` with ``--resume``;
2. load the base on ``--device``, default the task to the base's, check that they fit;
3. build the vector env (each env: :class:`ReplayableEpisodes` ∘ ``Monitor`` ∘ the method's env);
4. build the model, or restore it exactly from the last checkpoint;
5. train with the shared callbacks (progress, throughput, periodic evaluation on fixed episodes,
   checkpoints, a graceful stop on SIGTERM / Ctrl-C) plus the method's own;
6. save the final checkpoint and the policy artifact, evaluate it, write ``final_eval.json``.
"""

from __future__ import annotations

import abc
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from dpft.base_policies.checkpoint import load_policy
from dpft.base_policies.infra.device import resolve_device
from dpft.base_policies.infra.errors import CheckpointError, ConfigError, TrainingError
from dpft.base_policies.infra.interrupt import graceful_stop
from dpft.base_policies.infra.run_folder import open_run
from dpft.base_policies.infra.state_io import atomic_write_text, recover_dir
from dpft.base_policies.policy import Policy
from dpft.envs.chunking import check_policy_fits
from dpft.envs.episode_replay import ReplayableEpisodes
from dpft.finetune.common.best import BestPolicy
from dpft.finetune.common.callbacks import Checkpointer, PeriodicEval, ProgressBar, Throughput, WallClock
from dpft.finetune.common.config import FinetuneConfig
from dpft.finetune.common.data_parallel import (
    RANK_SEED_STRIDE,
    ShareEpisodes,
    average_gradients,
    broadcast_weights,
    check_in_sync,
)
from dpft.finetune.common.distributed import Shard, current_shard, local_device_spec
from dpft.finetune.common.final import choose_final
from dpft.finetune.common.guard import VALIDATION_SEED_OFFSET, Guard, row
from dpft.finetune.common.logger import EnvStepLogger
from dpft.finetune.common.policy_eval import evaluate
from dpft.finetune.common.presets import apply_preset
from dpft.finetune.common.run_checkpoint import load_sb3_checkpoint, save_sb3_checkpoint


class SB3Method(abc.ABC):
    """What one fine-tuning method adds to the shared loop. Everything else is :func:`run_sb3`."""

    command: ClassVar[str]
    """The CLI command, e.g. ``finetune dsrl`` (used in the "resume with ..." message)."""
    config_cls: ClassVar[type[FinetuneConfig]]
    uses_base: ClassVar[bool] = True
    """False for a baseline trained from scratch (``base`` is then None everywhere below)."""
    before_key_existed: ClassVar[dict[str, Any]] = {}
    """Settings added after runs were made, with the behaviour such a run had before them."""
    preset_family: ClassVar[str] = "dsrl"
    """Whose presets fill the unset settings (:mod:`.presets`)."""

    def frozen_base(self, cfg: Any, base: Policy) -> Policy:
        """The policy the method runs as its frozen base, made from the loaded ``--base`` (a residual
        may run it at its mode: :mod:`dpft.base_policies.zero_noise`). Default: the base itself."""
        return base

    def check(self, cfg: Any, base: Policy) -> None:
        """Refuse settings that cannot work with this base (one clear ConfigError)."""
        return None

    def measure(self, cfg: Any, base: Policy) -> tuple[Any, str | None]:
        """``cfg`` with the unset settings that are measured on the base filled in, and the line
        that says so (None: nothing measured). Runs once, on a fresh run; a resumed run keeps the
        settings it recorded."""
        return cfg, None

    def warmups(self, cfg: Any) -> dict[str, int]:
        """The warm-up settings (flag name -> env steps) that run before the learned part acts:
        a budget that ends inside them learns nothing and is refused."""
        return {}

    def env_steps_per_transition(self, cfg: Any, base: Policy) -> int:
        """Env steps one agent transition executes (a chunk method: the base's action horizon)."""
        return 1

    @abc.abstractmethod
    def make_env(self, cfg: Any, base: Policy) -> gym.Env:
        """The env the agent acts in (the frozen base usually lives inside it)."""

    def wrap_vec_env(self, cfg: Any, base: Policy, venv: VecEnv) -> VecEnv:
        """Wrap the vector env when the method needs all envs at once (a residual calls the base
        once for every env that needs a new chunk). A wrapper with state of its own gives it to
        checkpoints through ``get_vec_state`` / ``set_vec_state`` (see :mod:`.checkpoint`)."""
        return venv

    @abc.abstractmethod
    def algorithm(self, cfg: Any) -> type[BaseAlgorithm]:
        """The SB3 algorithm class (what a checkpoint is loaded with)."""

    @abc.abstractmethod
    def new_model(self, cfg: Any, base: Policy, venv: VecEnv) -> BaseAlgorithm:
        """A fresh model on ``base.device``."""

    def load_kwargs(self, cfg: Any, base: Policy) -> dict[str, Any]:
        """Constructor arguments that are not in SB3's zip (the base, the run config's behaviour)."""
        return {}

    @abc.abstractmethod
    def artifact(self, model: BaseAlgorithm, base: Policy, cfg: Any) -> Policy:
        """The fine-tuned policy (usually a ComposedPolicy of the base and the learned part)."""

    def also_evaluate(self, cfg: Any, policy: Policy) -> dict[str, Policy]:
        """Other forms of the policy to evaluate beside it at every evaluation, by name (recorded
        in evals.jsonl and TensorBoard as ``also_<name>``; never deployed). Default: none."""
        return {}

    def callbacks(self, cfg: Any, model: BaseAlgorithm, base: Policy, k: int) -> list[BaseCallback]:
        """The method's own callbacks (temperature floor, Q statistics, ...)."""
        return []

    def check_processes(self, cfg: Any, world: int) -> None:
        """Refuse settings that cannot run as data-parallel learners on ``world`` processes."""
        return None

    def resume_hint(self, cfg: Any) -> str:
        """The command that continues an interrupted run (printed when it stops)."""
        return f"dpft {self.command} --out {cfg.out} --resume"


def resolve_base(cfg: FinetuneConfig, device: torch.device) -> tuple[FinetuneConfig, Policy]:
    """The frozen base on ``device``; the task defaults to the one the base was trained for."""
    base = load_policy(cfg.base, device)
    if base.stateful:
        raise ConfigError(
            f"{cfg.base} is a stateful policy (a per-step residual: its actions depend on earlier calls) and "
            "cannot be a frozen base; fine-tune its own base instead, or train the residual with --form chunk"
        )
    cfg = replace(cfg, task=cfg.task or getattr(base.config, "task", None))
    if not cfg.task:
        raise ConfigError("the base policy does not record its task; pass --task")
    probe = cfg.make_env()
    try:
        check_policy_fits(base, probe, cfg.task)
    finally:
        probe.close()
    return cfg, base


def make_vec_env(cfg: FinetuneConfig, make_env) -> DummyVecEnv:
    """``cfg.envs`` copies; env i starts from seed + i and every episode gets its own seed."""
    venv = DummyVecEnv([lambda: ReplayableEpisodes(Monitor(make_env()))] * cfg.envs)
    venv.seed(cfg.seed)
    return venv


def evaluate_on_fixed_episodes(
    policy: Policy,
    cfg: FinetuneConfig,
    shard: Shard | None = None,
    seed: int | None = None,
    episodes: int | None = None,
) -> dict[str, Any]:
    """The same ``eval_episodes`` episodes at every evaluation (their own seeds, never trained on;
    ``seed`` and ``episodes``: other fixed episodes, default the evaluation's); split across the
    processes of a multi-process run (the same numbers as one process)."""
    shard = shard or Shard()
    episodes = episodes or cfg.eval_episodes
    envs = min(max(8, shard.world), episodes)  # 8, as in one process, unless more processes
    eval_cfg = replace(cfg, envs=envs, seed=cfg.eval_seed if seed is None else seed)
    if shard.world > envs:
        shard = Shard()  # fewer episodes than processes: every process evaluates them all
    return evaluate(policy, eval_cfg, episodes, shard=shard)


def validation_seed(cfg: FinetuneConfig) -> int:
    """--final guarded's validation episodes: neither trained on nor the reported evaluation's."""
    return cfg.seed + VALIDATION_SEED_OFFSET


def start_guard(cfg: FinetuneConfig, root: Path, base: Policy | None, shard: Shard, env_steps: int) -> Guard | None:
    """The deployed-policy guard of ``--final guarded`` (None otherwise), with the base measured."""
    if cfg.final != "guarded":
        return None
    if base is None:
        raise ConfigError("--final guarded compares against a base policy; training from scratch has none")
    guard = Guard(root, writes=shard.is_main)
    guard.start(
        base,
        validate=lambda p: evaluate_on_fixed_episodes(
            p, cfg, shard, seed=validation_seed(cfg), episodes=cfg.validation_episodes
        ),
        evaluate=lambda p: evaluate_on_fixed_episodes(p, cfg, shard),
        env_steps=env_steps,
    )
    return guard


def rank_checkpoint_dir(run, rank: int) -> Path:
    """Where process ``rank`` of a multi-process run keeps its checkpoint (its own envs and
    buffer; the weights are the same in all of them). Rank 0's is the run's ``checkpoint/``."""
    return run.checkpoint_dir if rank == 0 else run.root / "ranks" / f"checkpoint{rank}"


def check_resume_processes(run, world: int) -> None:
    """A run resumes with the number of processes that checkpointed it (each has its own buffer)."""
    from dpft.base_policies.infra.files import interpreting
    from dpft.base_policies.infra.state_io import RESTART, load_state, readable_copy

    folder = readable_copy(run.checkpoint_dir)
    with interpreting(folder / "state.json", "training state", CheckpointError, RESTART):
        saved = int(load_state(folder).get("processes", 1))
    if saved != world:
        raise ConfigError(
            f"{run.root} was checkpointed by {saved} process(es), each with its own envs and replay buffer; "
            f"resume it with {'--processes ' + str(saved) if saved > 1 else 'one process (no --processes)'}"
        )


def check_budget(cfg: FinetuneConfig, warmups: dict[str, int]) -> None:
    """Refuse a --steps that ends before the learned part ever acts (it would hand back the
    untrained policy as if it were fine-tuned)."""
    if warmups and cfg.steps <= sum(warmups.values()):
        parts = " + ".join(f"--{k.replace('_', '-')} {v}" for k, v in warmups.items())
        raise ConfigError(
            f"--steps {cfg.steps} ends before learning starts ({parts}): nothing would be learned; "
            f"pass a --steps above {sum(warmups.values())} or shorten the warm-ups"
        )


def check_finite(model: BaseAlgorithm, cfg: FinetuneConfig, checkpoint_dir: Path, k: int) -> None:
    """Stop with a clear message when training diverged (a non-finite weight anywhere in the
    policy: actor, critics, targets), before anything is saved over the last good checkpoint."""
    bad = [name for name, p in model.policy.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise TrainingError(
            f"fine-tuning diverged at env step {model.num_timesteps * k}: non-finite weights in {bad[0]}"
            f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}; {checkpoint_dir} keeps the last good "
            f"checkpoint. Train again in a new --out with a lower --lr (now {getattr(cfg, 'lr', '?')})"
        )


def run_sb3(cfg: FinetuneConfig, method: SB3Method) -> Path:
    """Train (or resume) ``method``; returns the folder of the fine-tuned policy. Under a launch
    with several processes the learners are data-parallel (:mod:`.data_parallel`)."""
    shard = current_shard()
    cfg, run = open_run(cfg, method.config_cls, method.before_key_existed, main=shard.is_main)
    device = resolve_device(local_device_spec(cfg.device))
    if method.uses_base:
        cfg, base = resolve_base(cfg, device)
        base = method.frozen_base(cfg, base)
    elif not cfg.task:
        raise ConfigError("--task is required when training from scratch")
    else:
        base = None
    if not cfg.resume:  # a resumed run keeps the settings it recorded
        cfg, chosen = apply_preset(cfg, method.preset_family, method.uses_base)
        cfg, measured = method.measure(cfg, base)
        for line in (chosen, measured):
            if line and shard.is_main:
                print(line, flush=True)
    check_budget(cfg, method.warmups(cfg))
    method.check(cfg, base)
    if shard.world > 1:
        method.check_processes(cfg, shard.world)
    fresh = not (cfg.resume and run.has_checkpoint())
    if not fresh:
        check_resume_processes(run, shard.world)
    if shard.is_main:
        run.write_config(cfg)
    # k: env steps of the whole run per transition of one process (each process steps its own envs)
    k = method.env_steps_per_transition(cfg, base) * shard.world
    env_cfg = replace(cfg, seed=cfg.seed + RANK_SEED_STRIDE * shard.rank)  # each process its own episodes
    venv = method.wrap_vec_env(env_cfg, base, make_vec_env(env_cfg, lambda: method.make_env(env_cfg, base)))
    checkpoint_dir = rank_checkpoint_dir(run, shard.rank)
    if not shard.is_main:
        recover_dir(checkpoint_dir)  # only this process writes it
    if fresh:
        model, clock = method.new_model(cfg, base, venv), WallClock()
        if shard.world > 1:
            broadcast_weights(model)  # the same start on every process ...
            model.set_random_seed(env_cfg.seed)  # ... then its own exploration and replay batches
        if shard.is_main:
            run.writer(cfg).close()  # the full config as TensorBoard text
    else:
        kwargs = {"device": device, **method.load_kwargs(cfg, base)}
        model, state = load_sb3_checkpoint(method.algorithm(cfg), checkpoint_dir, venv, **kwargs)
        clock = WallClock(float(state.get("wall_s", 0.0)))
    if shard.world > 1:
        average_gradients(model, shard)
    model.set_logger(EnvStepLogger(run.tb_dir, k) if shard.is_main else silent_logger())

    def save() -> None:
        check_finite(model, cfg, run.checkpoint_dir, k)  # never overwrite a good checkpoint with NaN weights
        if shard.world > 1:
            check_in_sync(model, shard)
        save_sb3_checkpoint(model, checkpoint_dir, {"wall_s": clock.seconds, "processes": shard.world})
        shard.barrier()  # every process's checkpoint is complete before any goes on

    best = BestPolicy(run.root) if cfg.final == "best" and shard.is_main else None
    if best is not None:
        best.forget_after(model.num_timesteps * k)

    guard = start_guard(cfg, run.root, base, shard, model.num_timesteps * k)

    def evaluate_now() -> dict[str, Any]:
        policy = method.artifact(model, base, cfg)
        summary = evaluate_on_fixed_episodes(policy, cfg, shard)
        for name, other in method.also_evaluate(cfg, policy).items():
            summary[f"also_{name}"] = row(evaluate_on_fixed_episodes(other, cfg, shard))
        if best is not None:
            best.offer(policy, summary, model.num_timesteps * k)
        if guard is not None:
            val = guard.validate(policy)
            summary = {**summary, "deployed": guard.offer(policy, summary, val, model.num_timesteps * k)}
            summary["validation"] = row(val)
        return summary

    bar = ProgressBar(cfg.steps, k, method.command.split()[-1], cfg.progress and shard.is_main)
    evals = run.root / "evals.jsonl" if shard.is_main else None
    callbacks = [
        bar,
        *method.callbacks(cfg, model, base, k),
        Throughput(k, cfg.eval_every),
        PeriodicEval(k, cfg.eval_every, evaluate_now, evals, clock, bar),
        Checkpointer(k, cfg.checkpoint_every, save, method.resume_hint(cfg), shard.any),
    ]
    if shard.world > 1:
        callbacks.append(ShareEpisodes(shard))  # rollout/* scalars over every process's episodes
    total = math.ceil(cfg.steps / k)
    with graceful_stop():
        model.learn(
            total_timesteps=total - (0 if fresh else model.num_timesteps),
            callback=callbacks,
            reset_num_timesteps=fresh,
            progress_bar=False,
        )
    save()
    policy = method.artifact(model, base, cfg)
    summary = evaluate_on_fixed_episodes(policy, cfg, shard)
    env_steps = model.num_timesteps * k
    if guard is not None:  # every process takes part in the evaluation, so before the others return
        guard.offer(policy, summary, guard.validate(policy), env_steps)
    if not shard.is_main:
        return run.policy_dir
    if best is not None:
        best.offer(policy, summary, env_steps)
    record = {"env_steps": env_steps, "train_wall_s": round(clock.seconds, 1), "processes": shard.world}
    record |= {"final": cfg.final, "policy_env_steps": env_steps}
    policy, final = choose_final(policy, summary, record, best, guard, lambda: base, device, "policy_env_steps")
    policy.save(run.policy_dir)
    atomic_write_text(run.root / "final_eval.json", json.dumps(final, indent=2))
    success = "n/a" if final["success_rate"] is None else f"{final['success_rate']:.3f}"
    print(
        f"policy saved to {run.policy_dir}; final eval: success {success}, "
        f"return {final['return_mean']:.1f} over {final['episodes']} episodes"
    )
    return run.policy_dir


def silent_logger():
    """SB3's logger with no outputs (processes other than the main one write no TensorBoard)."""
    from stable_baselines3.common.logger import Logger

    return Logger(folder=None, output_formats=[])
