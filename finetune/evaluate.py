"""``dpft eval``: the single evaluation path for every policy artifact (base or fine-tuned)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from dpft.base_policies import load_policy
from dpft.base_policies.checkpoint import DEFAULT_BASE
from dpft.base_policies.device import check_device_spec, resolve_device
from dpft.base_policies.errors import ConfigError
from dpft.base_policies.paths import check_output_file
from dpft.base_policies.policy import Policy
from dpft.base_policies.registry import multi_process
from dpft.envs.chunking import check_policy_fits
from dpft.envs.config import EnvConfig
from dpft.envs.tasks import task_defines_success
from dpft.finetune.distributed import Shard, current_shard, local_device_spec
from dpft.finetune.rollout import EnvSlots, EpisodeResult, policy_chunk_fn, run_episodes
from dpft.finetune.stats import mean_ci, wilson_interval


@dataclass
class EvalConfig(EnvConfig):
    """Evaluate a policy folder on a task: success rate and return with 95% intervals."""

    RANGES: ClassVar[dict[str, str]] = {"episodes": ">= 1", "video_episodes": ">= 1"}
    """Declared range of each numeric setting (dpft.base_policies.ranges)."""

    task: str | None = None  # type: ignore[assignment]
    """Task id (default: the task the policy was trained for)."""
    policy: str = DEFAULT_BASE
    """Policy folder, a run folder containing policy/, or shipped:<name> for a policy installed with dpft."""
    episodes: int = 50
    """Number of evaluation episodes."""
    json: bool = False
    """Print one JSON object instead of a text report."""
    video: Path | None = None
    """Write an MP4 or GIF of a few episodes (offscreen MuJoCo rendering)."""
    video_episodes: int = 2
    """Episodes in the video."""
    overwrite: bool = False
    """Replace the --video file if it exists (otherwise an existing file is an error, checked before evaluating)."""
    logdir: Path | None = None
    """Also write TensorBoard scalars (eval/success_rate, eval/return_mean) here."""
    progress: bool = True
    """Show a progress bar."""
    zero_noise: bool = False
    """Feed the policy all-zero initial noise (its deterministic mode) instead of N(0, I) samples."""
    device: str = "auto"
    """auto (a CUDA GPU if there is one), cpu, cuda or cuda:N: where the policy runs. The noise is
    drawn on the CPU from the seed, so the same seed gives the same noise on every device."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_device_spec(self.device)
        if self.episodes < 1:
            raise ConfigError(f"--episodes ({self.episodes}) must be >= 1")
        if self.video is not None and self.video_episodes < 1:
            raise ConfigError(f"--video-episodes ({self.video_episodes}) must be >= 1 when --video is given")


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
    process (:mod:`dpft.finetune.distributed`)."""
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


def report(summary: dict[str, Any], policy: str) -> str:
    lines = [f"policy {policy} on {summary['task']}: {summary['episodes']} episodes, seed {summary['seed']}"]
    if summary.get("success_rate") is not None:
        lo, hi = summary["success_ci95"]
        lines.append(
            f"  success rate  {summary['success_rate']:.3f}  (95% CI {lo:.3f}-{hi:.3f}; "
            f"{summary['successes']}/{summary['episodes']})"
        )
    reward = summary.get("reward", "dense")
    ret, ci = summary["return_mean"], summary["return_ci95"]
    lines.append(f"  return        {ret:.2f} ± {ci:.2f} (95% CI; reward {reward})")
    lines.append(f"  episode length {summary['length_mean']:.1f}, {summary['env_steps_per_s']:.0f} env steps/s")
    return "\n".join(lines)


@multi_process
def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """``dpft eval``; under ``accelerate launch`` (or ``--processes N``) the episodes are split
    across the processes by env slot and the numbers are those of one process."""
    if cfg.video is not None:  # before the evaluation, not after it
        check_output_file(cfg.video, cfg.overwrite, "--video", (".mp4", ".gif"))
    shard = current_shard()
    shard.check_slots(cfg.envs, cfg.episodes)  # before loading anything
    policy = load_policy(cfg.policy, resolve_device(local_device_spec(cfg.device)))
    task = cfg.task or getattr(getattr(policy, "config", None), "task", None)
    if not task:
        raise ConfigError(f"{cfg.policy} does not record its task; pass --task")
    cfg = replace(cfg, task=task)
    progress = cfg.progress and not cfg.json and shard.is_main
    summary = evaluate(policy, cfg, cfg.episodes, progress=progress, zero_noise=cfg.zero_noise, shard=shard)
    summary["noise"] = "zero" if cfg.zero_noise else "gaussian"
    summary["reward"] = cfg.reward or "dense"
    summary["processes"] = shard.world
    if not shard.is_main:
        return summary  # the main process reports, writes TensorBoard and the video
    if cfg.logdir is not None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(cfg.logdir)) as w:
            if summary["success_rate"] is not None:
                w.add_scalar("eval/success_rate", summary["success_rate"], 0)
            w.add_scalar("eval/return_mean", summary["return_mean"], 0)
    if cfg.video is not None:
        from dpft.finetune.video import record_video

        record_video(policy, cfg, cfg.video, cfg.video_episodes, zero_noise=cfg.zero_noise)
    print(json.dumps(json_safe(summary), allow_nan=False) if cfg.json else report(summary, cfg.policy))
    trained_with = getattr(policy, "meta", {}).get("reward")
    if trained_with and trained_with != summary["reward"] and not cfg.json:
        print(
            f"note: returns use the reward {summary['reward']!r}; the policy was fine-tuned with {trained_with!r} "
            f"(pass --reward {trained_with!r} to score its returns that way)"
        )
    return summary
