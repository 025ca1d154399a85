"""``dpft steerability``: how much room does a base policy give noise steering (DSRL)?

DSRL can only choose among the behaviours the frozen base produces for *some* initial noise.
Before an hour of training, run the base on the same ``--states`` start states ``--streams`` K
times, each time with another stream of N(0, I) noises, and once with zero noise:

* **base**: success (or return) with N(0, I) noise, over all K x states episodes, and with zero noise;
* **best-of-K**: per start state the best of its K outcomes, averaged over the start states. A
  noise policy that only had to find one good stream per start state could reach it: a rough
  ceiling for steering within N(0, I)'s typical set (a learned noise can be atypical and is chosen
  per decision, with feedback, so it is not a bound);
* **noise-sensitive states**: start states whose outcome differs between streams (success tasks),
  the only ones where the noise changed anything;
* **chunk spread**: at one observation, how far apart the chunks of 32 noises are, against how
  much the zero-noise chunk varies between observations (ratio near 0: the noise barely moves
  the actions).

Start state i of env e is the same in every stream (the env seeds are fixed, and a task draws
its start states only at reset). On a task with a success flag and no ``--reward``, episodes
end at success (``sparse_success(terminate=True)``): the outcome is the same, the probe faster.
The reading at the end is a rule of thumb: room for DSRL when best-of-K, or the zero noise, beats
the base by at least ``--room`` (success) or by ``--room`` of the base's return; otherwise a
residual policy, which can leave the base's modes, is the better first try. The zero noise counts
because a noise policy can choose it everywhere: on the HalfCheetah medium base, 8 random streams
gained +15% but the zero noise +37%, and no random stream comes near it. When the zero noise alone
gets there, the reading says so: ``dpft eval --zero-noise`` is then worth a look before training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from dpft.base_policies import load_policy
from dpft.base_policies.checkpoint import DEFAULT_BASE
from dpft.base_policies.infra.device import check_device_spec, resolve_device
from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.registry import multi_process
from dpft.base_policies.policy import Policy
from dpft.envs.config import EnvConfig
from dpft.envs.tasks import task_defines_success
from dpft.finetune.common.action_spread import chunk_spread
from dpft.finetune.common.distributed import Shard, current_shard, local_device_spec
from dpft.finetune.common.policy_eval import json_safe, rollout
from dpft.finetune.common.stats import mean_ci, wilson_interval

STREAM_SEED = 10_000
"""Noise stream k draws from a generator seeded STREAM_SEED + k."""


@dataclass
class SteerabilityConfig(EnvConfig):
    """How much the initial noise can change a base policy's outcome: best-of-K noise streams on fixed start states."""

    RANGES: ClassVar[dict[str, str]] = {"states": ">= 1", "streams": ">= 2", "spread_states": ">= 0", "room": "> 0"}
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

    task: str | None = None  # type: ignore[assignment]
    """Task id (default: the task the policy was trained for)."""
    policy: str = DEFAULT_BASE
    """Policy folder, a run folder containing policy/, or shipped:<name>."""
    states: int = 50
    """Start states (the same ones in every stream)."""
    streams: int = 8
    """K: N(0, I) noise streams per start state."""
    spread_states: int = 3
    """Zero-noise episodes along which the chunk spread is measured (0: skip it)."""
    room: float = 0.15
    """Room for DSRL: best-of-K beats the base by this much success, or by this share of its return."""
    json: bool = False
    """Print one JSON object instead of a text report."""
    progress: bool = True
    """Show a progress bar."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N: where the policy runs."""
    seed: int = 2000
    """Env seed of the start states: env i is reset with seed + i."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_device_spec(self.device)
        if self.states < 1 or self.streams < 2:
            raise ConfigError(f"--states ({self.states}) must be >= 1 and --streams ({self.streams}) >= 2")
        if self.spread_states < 0 or self.room <= 0:
            raise ConfigError("--spread-states must be >= 0 and --room > 0")


def outcomes(
    policy: Policy, cfg: EnvConfig, states: int, streams: int, shard: Shard | None = None, progress: bool = False
) -> dict[str, np.ndarray]:
    """Success and return ``[streams, states]`` with N(0, I) noise streams, and ``[states]`` with zero noise."""
    runs = []
    for k in range(streams):
        results, _ = rollout(policy, cfg, states, shard=shard, noise_seed=STREAM_SEED + k, progress=progress)
        runs.append(results)
    zero, _ = rollout(policy, cfg, states, zero_noise=True, shard=shard)
    success = np.array([[r.success for r in run] for run in runs], dtype=float)
    returns = np.array([[r.episode_return for r in run] for run in runs])
    return {
        "success": success,
        "return": returns,
        "zero_success": np.array([r.success for r in zero], dtype=float),
        "zero_return": np.array([r.episode_return for r in zero]),
    }


def summarise(o: dict[str, np.ndarray], by_success: bool, room: float) -> dict[str, Any]:
    """The numbers of the report, each with its 95% interval, and the reading."""
    k, n = o["success"].shape
    out: dict[str, Any] = {"states": n, "streams": k}
    if by_success:
        s = o["success"]
        best = s.max(axis=0)
        total = int(s.sum())
        out["base_success"] = total / s.size
        out["base_success_ci95"] = list(wilson_interval(total, s.size))
        out["base_success_per_stream_sd"] = float(s.mean(axis=1).std(ddof=1))
        out["zero_noise_success"] = float(o["zero_success"].mean())
        out["zero_noise_success_ci95"] = list(wilson_interval(int(o["zero_success"].sum()), n))
        out["best_of_k_success"] = float(best.mean())
        out["best_of_k_success_ci95"] = list(wilson_interval(int(best.sum()), n))
        sensitive = int((s.max(axis=0) != s.min(axis=0)).sum())
        out["noise_sensitive_states"] = sensitive / n
        out["noise_sensitive_states_ci95"] = list(wilson_interval(sensitive, n))
        base_share, zero = out["base_success"], out["zero_noise_success"]
        has_room = max(out["best_of_k_success"], zero) - base_share >= room
        zero_alone = zero - base_share >= room
        best_share = out["best_of_k_success"]
        what = f"best-of-{k} solves {best_share:.0%} of start states against the base's {base_share:.0%}"
        what += f", zero noise {zero:.0%}" if zero_alone else ""
    else:
        r = o["return"]
        base, base_ci = mean_ci(list(r.mean(axis=0)))
        best, best_ci = mean_ci(list(r.max(axis=0)))
        zero, zero_ci = mean_ci(list(o["zero_return"]))
        out.update(base_return=base, base_return_ci95=base_ci, zero_noise_return=zero, zero_noise_return_ci95=zero_ci)
        out.update(best_of_k_return=best, best_of_k_return_ci95=best_ci)
        scale = max(abs(base), 1e-9)
        has_room = max(best, zero) - base >= room * scale
        zero_alone = zero - base >= room * scale
        what = f"best-of-{k} return {best:.1f} against the base's {base:.1f} ({(best - base) / scale:+.0%})"
        what += f", zero noise {zero:.1f} ({(zero - base) / scale:+.0%})" if zero_alone else ""
    out["dsrl_has_room"] = bool(has_room)
    zero_hint = " (the zero noise alone gets there: try dpft eval --zero-noise first)" if zero_alone else ""
    out["reading"] = (
        f"DSRL has room here: {what}{zero_hint}. Steer the noise: dpft finetune dsrl, or dpft finetune find "
        "(on-policy, quicker per run); dpft finetune dppo changes the denoiser itself."
        if has_room
        else f"Little room for DSRL: {what}; consider a residual policy (dpft finetune residual, with --demos "
        "if you have demonstrations), which can leave the base's modes."
    )
    return out


def report(s: dict[str, Any], policy: str, task: str) -> str:
    k, n = s["streams"], s["states"]
    lines = [f"steerability of {policy} on {task}: {n} start states x {k} N(0, I) noise streams, and zero noise"]
    if "base_success" in s:
        ci = lambda key: "[{:.2f}, {:.2f}]".format(*s[key + "_ci95"])  # noqa: E731
        lines += [
            f"  base, N(0, I)        success {s['base_success']:.2f} {ci('base_success')}"
            f" (sd over streams {s['base_success_per_stream_sd']:.2f})",
            f"  base, zero noise     success {s['zero_noise_success']:.2f} {ci('zero_noise_success')}",
            f"  best-of-{k:<12} success {s['best_of_k_success']:.2f} {ci('best_of_k_success')}",
            f"  noise-sensitive      {s['noise_sensitive_states']:.2f} of start states {ci('noise_sensitive_states')}",
        ]
    else:
        lines += [
            f"  base, N(0, I)        return {s['base_return']:.1f} ± {s['base_return_ci95']:.1f}",
            f"  base, zero noise     return {s['zero_noise_return']:.1f} ± {s['zero_noise_return_ci95']:.1f}",
            f"  best-of-{k:<12} return {s['best_of_k_return']:.1f} ± {s['best_of_k_return_ci95']:.1f}",
        ]
    if "spread_across_noises" in s:
        lines.append(
            f"  chunk spread         {s['spread_across_noises']:.3f} across noises at one observation, "
            f"{s['spread_across_observations']:.3f} across observations (ratio {s['spread_ratio']:.2f})"
        )
    lines.append(s["reading"])
    return "\n".join(lines)


@multi_process
def steerability(cfg: SteerabilityConfig) -> dict[str, Any]:
    """``dpft steerability``: see the module docstring. Runs on several processes like ``eval``."""
    shard = current_shard()
    policy = load_policy(cfg.policy, resolve_device(local_device_spec(cfg.device)))
    task = cfg.task or getattr(getattr(policy, "config", None), "task", None)
    if not task:
        raise ConfigError(f"{cfg.policy} does not record its task; pass --task")
    by_success = task_defines_success(task)
    reward = cfg.reward or ("sparse_success(terminate=True)" if by_success else None)
    env_cfg = replace(cfg, task=task, reward=reward, envs=min(cfg.envs, cfg.states))
    o = outcomes(policy, env_cfg, cfg.states, cfg.streams, shard, progress=cfg.progress and shard.is_main)
    out = {"policy": cfg.policy, "task": task, "seed": cfg.seed, **summarise(o, by_success, cfg.room)}
    if cfg.spread_states and shard.is_main:
        spread = chunk_spread(policy, env_cfg, cfg.spread_states)
        within, across = float(spread.within.mean()), spread.across
        out.update(
            spread_across_noises=within, spread_across_observations=across, spread_ratio=within / max(across, 1e-12)
        )
    if shard.is_main:
        print(json.dumps(json_safe(out), allow_nan=False) if cfg.json else report(out, cfg.policy, task))
    return out
