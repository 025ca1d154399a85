"""``dpft collect``: demonstrations from a task's expert, in the native HDF5 format."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from dpft.base_policies.data import write_robomimic_hdf5
from dpft.base_policies.infra.errors import ConfigError, DpftError
from dpft.base_policies.infra.paths import check_output_file
from dpft.base_policies.infra.registry import multi_process
from dpft.envs.config import EnvConfig
from dpft.envs.experts import expert_on_slots, get_expert
from dpft.envs.experts.demonstrators import MixedDemonstrators, describe, load_demonstrators
from dpft.finetune.common.distributed import current_shard
from dpft.finetune.common.rollout import EnvSlots, EpisodeResult, run_episodes


@dataclass
class CollectConfig(EnvConfig):
    """Roll out the task's expert and write demonstrations (robomimic-layout HDF5)."""

    RANGES: ClassVar[dict[str, str]] = {"episodes": ">= 1", "action_noise": ">= 0"}
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

    episodes: int = 50
    """Number of episodes to write."""
    out: Path = Path("demos.hdf5")
    """Output file."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to the expert's actions (the noisy actions are executed and recorded)."""
    expert_level: str | None = None
    """Which of the task's experts (locomotion: expert or medium, D4RL's levels); default its first one."""
    demonstrators: str | None = None
    """Simulated demonstrators of mixed skill instead of one noisy expert: a named mix (mh, after
    robomimic's multi-human sets; mh-hard, wider skill gaps) or a JSON file of them
    (dpft.envs.experts.demonstrators). Each episode's demonstrator is listed in mask/<name>, so
    train-bc --filter-key <name> selects it."""
    success_only: bool = False
    """Keep only successful episodes (collects until --episodes successes, at most 10x attempts)."""
    progress: bool = True
    """Show a progress bar."""
    overwrite: bool = False
    """Replace --out if it exists (otherwise an existing file is an error, checked before any rollout)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.episodes < 1 or self.action_noise < 0:
            raise ConfigError("--episodes must be >= 1 and --action-noise >= 0")
        if self.demonstrators is not None and self.action_noise > 0:
            raise ConfigError("--action-noise does not apply with --demonstrators (each sets its own noise)")


@multi_process
def collect(cfg: CollectConfig) -> list[EpisodeResult]:
    """``dpft collect``. Under ``accelerate launch`` (or ``--processes N``) each process runs its
    env slots; every process sees all episodes, the main one writes the file, which is the
    same file one process writes (:mod:`dpft.finetune.common.distributed`)."""
    shard = current_shard()
    shard.check_slots(cfg.envs, cfg.episodes)
    if shard.is_main:
        check_output_file(cfg.out, cfg.overwrite, "--out", (".hdf5", ".h5"))  # before any rollout
    expert = get_expert(cfg.task, cfg.expert_level)
    demonstrators = load_demonstrators(cfg.demonstrators) if cfg.demonstrators else None
    rng = np.random.default_rng(cfg.seed)  # each round below starts its own stream
    slots = EnvSlots(tuple(shard.slots(cfg.envs)), cfg.envs)
    venv = replace(cfg, envs=len(slots.indices)).make_vector(1, 1, 1, record_steps=True)
    low, high = venv.single_action_space.low[0], venv.single_action_space.high[0]

    index = list(slots.indices)

    def chunk_fn(obs: np.ndarray) -> np.ndarray:
        actions = expert_on_slots(expert, obs[:, 0], index, slots.total)
        if cfg.action_noise > 0:  # one draw for all envs of the run; this process's rows of it
            actions = actions + rng.normal(0, cfg.action_noise, (slots.total, actions.shape[1]))[index]
        return np.clip(actions, low, high).astype(np.float32)[:, None]

    kept: list[EpisodeResult] = []
    if demonstrators:  # episodes per demonstrator still to keep: equal shares
        tried, won = [0] * len(demonstrators), [0] * len(demonstrators)  # every episode run, per demonstrator
        short_of = [
            cfg.episodes // len(demonstrators) + (j < cfg.episodes % len(demonstrators))
            for j in range(len(demonstrators))
        ]
    attempts, round_seed, t0, steps = 0, cfg.seed, time.perf_counter(), 0
    progress = cfg.progress and shard.is_main
    try:
        while len(kept) < cfg.episodes:
            want = cfg.episodes - len(kept)
            if attempts:  # a later round: a fresh stream, so no process depends on how long another ran
                rng = np.random.default_rng([cfg.seed, round_seed])
            step_fn = chunk_fn
            if demonstrators:  # each round its own per-episode streams, as the expert's noise above
                short = tuple(j for j in range(len(demonstrators)) if short_of[j] > 0)
                want = sum(short_of)
                step_fn = MixedDemonstrators(
                    expert, demonstrators, round_seed, slots.indices, slots.total, low, high, cfg.task, short
                )
            results = run_episodes(
                step_fn, venv, want, seed=round_seed, progress=progress, record_steps=True, slots=slots
            )
            results = sorted(shard.gather(results), key=lambda r: r.env_index)
            steps += sum(r.length for r in results)
            attempts += len(results)
            round_seed += 100_003  # next round: fresh start states
            if demonstrators:  # each demonstrator fills its own share
                for r in results:
                    j = int(r.decisions["demonstrator"][0])
                    tried[j], won[j] = tried[j] + 1, won[j] + r.success
                    if short_of[j] > 0 and (r.success or not cfg.success_only):
                        kept.append(r)
                        short_of[j] -= 1
            else:
                kept += [r for r in results if r.success or not cfg.success_only][:want]
            if attempts >= 10 * cfg.episodes and len(kept) < cfg.episodes:
                if demonstrators:
                    lacking = [f"{d.name} ({n} short)" for d, n in zip(demonstrators, short_of) if n > 0]
                    raise DpftError(
                        f"after {attempts} episodes the demonstrators {', '.join(lacking)} still lack successes; "
                        "make them more skilled, lower --episodes or drop --success-only"
                    )
                raise DpftError(
                    f"only {len(kept)} of {attempts} expert episodes succeeded; lower --episodes, "
                    "lower --action-noise or drop --success-only"
                )
    finally:
        venv.close()
    steps_per_s = steps / max(time.perf_counter() - t0, 1e-9)
    if not shard.is_main:
        return kept
    env_args = {
        "task": cfg.task,
        "max_episode_steps": cfg.max_episode_steps,
        "reward": cfg.reward,
        "action_low": low.tolist(),
        "action_high": high.tolist(),
        "collector": "expert",
        "expert_level": cfg.expert_level,
        "action_noise": cfg.action_noise,
        "seed": cfg.seed,
        "success_only": cfg.success_only,
    }
    masks = {}
    if demonstrators:
        env_args["demonstrators"] = describe(demonstrators)
        kept.sort(key=lambda r: int(r.decisions["demonstrator"][0]))  # demo_i grouped by demonstrator
        who = [int(r.decisions["demonstrator"][0]) for r in kept]
        masks = {d.name: [f"demo_{i}" for i, w in enumerate(who) if w == j] for j, d in enumerate(demonstrators)}
    episodes = [r.steps for r in kept]
    for i, (ep, r) in enumerate(zip(episodes, kept)):
        ep.name, ep.success_step = f"demo_{i}", r.success_step
    write_robomimic_hdf5(cfg.out, episodes, env_args, masks)
    rate = sum(r.success for r in kept) / len(kept)
    returns = np.array([r.episode_return for r in kept])
    for j, (name, demos) in enumerate(masks.items()):
        print(f"  {name}: {len(demos)} kept, {tried[j]} attempted, success {won[j] / max(tried[j], 1):.2f}")
    print(
        f"wrote {len(kept)} episodes ({sum(len(e) for e in episodes)} steps, success {rate:.2f}, "
        f"return {returns.mean():.1f} ± {returns.std():.1f}; "
        f"{attempts} attempted, {steps_per_s:.0f} env steps/s) to {cfg.out}"
    )
    return kept
