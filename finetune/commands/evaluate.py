"""``dpft eval``: the single evaluation path for every policy artifact (base or fine-tuned)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from dpft.base_policies import load_policy
from dpft.base_policies.checkpoint import DEFAULT_BASE
from dpft.base_policies.infra.device import check_device_spec, resolve_device
from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.paths import check_output_file
from dpft.base_policies.infra.registry import multi_process
from dpft.envs.config import EnvConfig
from dpft.finetune.common.distributed import current_shard, local_device_spec
from dpft.finetune.common.policy_eval import evaluate, json_safe, rollout, summarise  # noqa: F401 (re-exported)


@dataclass
class EvalConfig(EnvConfig):
    """Evaluate a policy folder on a task: success rate and return with 95% intervals."""

    RANGES: ClassVar[dict[str, str]] = {"episodes": ">= 1", "video_episodes": ">= 1"}
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

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
    noise_mode: str | None = None
    """A DSRL (steered) policy only: act with a draw of its noise distribution (sampled) or its mean
    noise (mean) instead of the mode it was saved with."""
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
    if cfg.noise_mode is not None:
        modes = getattr(policy, "NOISE_MODES", ())
        if cfg.noise_mode not in modes:
            raise ConfigError(
                f"--noise-mode {cfg.noise_mode!r}: "
                + (f"choose one of {list(modes)}" if modes else f"{cfg.policy} is not a DSRL policy; drop the flag")
            )
        policy.noise_mode = cfg.noise_mode
    task = cfg.task or getattr(getattr(policy, "config", None), "task", None)
    if not task:
        raise ConfigError(f"{cfg.policy} does not record its task; pass --task")
    cfg = replace(cfg, task=task)
    progress = cfg.progress and not cfg.json and shard.is_main
    summary = evaluate(policy, cfg, cfg.episodes, progress=progress, zero_noise=cfg.zero_noise, shard=shard)
    summary["noise"] = "zero" if cfg.zero_noise else "gaussian"
    summary["reward"] = cfg.reward or "dense"
    if hasattr(policy, "noise_mode"):
        summary["noise_mode"] = policy.noise_mode
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
        from dpft.finetune.common.video import record_video

        record_video(policy, cfg, cfg.video, cfg.video_episodes, zero_noise=cfg.zero_noise)
    print(json.dumps(json_safe(summary), allow_nan=False) if cfg.json else report(summary, cfg.policy))
    trained_with = getattr(policy, "meta", {}).get("reward")
    if trained_with and trained_with != summary["reward"] and not cfg.json:
        print(
            f"note: returns use the reward {summary['reward']!r}; the policy was fine-tuned with {trained_with!r} "
            f"(pass --reward {trained_with!r} to score its returns that way)"
        )
    return summary
