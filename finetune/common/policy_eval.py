"""Evaluation of a policy on fixed episodes, shared by ``dpft eval``, the training loops'
periodic evaluations, guarded deployment and the benchmarks: start states from a seed, the noise
from its own seeded generator, episodes split over processes, and a summary with 95% intervals."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import torch

from dpft.base_policies.policy import Policy
from dpft.envs.chunking import check_policy_fits
from dpft.envs.config import EnvConfig
from dpft.envs.tasks import task_defines_success
from dpft.finetune.common.distributed import Shard
from dpft.finetune.common.rollout import EnvSlots, EpisodeResult, policy_chunk_fn, run_episodes
from dpft.finetune.common.stats import mean_ci, wilson_interval


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None: JSON has no NaN (the 95% interval
    of a single episode's return is NaN), and strict parsers reject Python's ``NaN`` extension."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def rollout(
    policy: Policy,
    cfg: EnvConfig,
    episodes: int,
    progress: bool = False,
    zero_noise: bool = False,
    shard: Shard | None = None,
    noise_seed: int | None = None,
) -> tuple[list[EpisodeResult], float]:
    """Every episode of ``episodes`` (ordered by env, then episode) and the seconds they took.

    Start states come from ``cfg.seed`` (env i is reset with seed + i), the initial noise from
    ``noise_seed`` (default ``cfg.seed``): the same start states with another noise stream is
    another ``noise_seed``. With a ``shard`` of several processes, this process runs its env
    slots of the ``cfg.envs`` and every process gets all episodes: the same episodes as one
    process (:mod:`dpft.finetune.common.distributed`)."""
    shard = shard or Shard()
    shard.check_slots(cfg.envs, episodes)
    slots = EnvSlots(tuple(shard.slots(cfg.envs)), cfg.envs)
    local = replace(cfg, envs=len(slots.indices))
    venv = local.make_vector(policy.obs_horizon, policy.pred_horizon, policy.action_horizon)
    try:
        check_policy_fits(policy, venv, cfg.task)
        gen = torch.Generator().manual_seed(cfg.seed if noise_seed is None else noise_seed)
        t0 = time.perf_counter()
        fn = policy_chunk_fn(policy, gen, zero_noise=zero_noise, rows=slots)
        results = run_episodes(fn, venv, episodes, seed=cfg.seed, progress=progress, slots=slots)
        results = shard.gather(results)
        elapsed = time.perf_counter() - t0
    finally:
        venv.close()
    results.sort(key=lambda r: r.env_index)  # stable: each env's episodes stay in order
    return results, elapsed


def evaluate(
    policy: Policy,
    cfg: EnvConfig,
    episodes: int,
    progress: bool = False,
    zero_noise: bool = False,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Roll out ``policy`` for ``episodes`` episodes and summarise (used by eval and training);
    split across processes with a ``shard`` (:func:`rollout`)."""
    results, elapsed = rollout(policy, cfg, episodes, progress, zero_noise, shard)
    return summarise(results, cfg, elapsed)


def summarise(results: list[EpisodeResult], cfg: EnvConfig, elapsed: float) -> dict[str, Any]:
    n = len(results)
    ret, ret_ci = mean_ci([r.episode_return for r in results])
    out: dict[str, Any] = {
        "task": cfg.task,
        "episodes": n,
        "seed": cfg.seed,
        "return_mean": ret,
        "return_ci95": ret_ci,
        "length_mean": sum(r.length for r in results) / max(n, 1),
        "env_steps_per_s": sum(r.length for r in results) / max(elapsed, 1e-9),
    }
    if task_defines_success(cfg.task):
        k = sum(r.success for r in results)
        lo, hi = wilson_interval(k, n)
        out.update(success_rate=k / max(n, 1), success_ci95=[lo, hi], successes=k)
    else:
        out.update(success_rate=None)
    return out
