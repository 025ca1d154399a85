"""How a preference fine-tuning run scores its policy: fixed episodes, win rate against the base
on the same start states, and the per-round rows of ``evals.jsonl``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dpft.base_policies.infra.state_io import atomic_write_text
from dpft.base_policies.policy import DenoisingPolicy
from dpft.envs.config import EnvConfig
from dpft.finetune.common.distributed import Shard
from dpft.finetune.common.policy_eval import rollout
from dpft.finetune.common.stats import mean_ci, wilson_interval


def evaluate_episodes(
    policy: DenoisingPolicy, env_cfg: EnvConfig, episodes: int, seed: int, shard: Shard | None = None
) -> list[tuple[bool, float]]:
    """(success, return) of each of ``episodes`` fixed episodes (start states and noise from
    ``seed``), split across the processes of a multi-process run by env slot (the same episodes
    and numbers as one process)."""
    shard = shard or Shard()
    if shard.world > min(env_cfg.envs, episodes):
        shard = Shard()  # fewer episodes than processes: every process plays them all
    results, _ = rollout(policy, replace(env_cfg, seed=seed), episodes, shard=shard)
    return [(r.success, r.episode_return) for r in results]


def win_rate(new: list[tuple[bool, float]], base: list[tuple[bool, float]], by_success: bool) -> float:
    """Share of episodes where ``new`` beats ``base`` on the same start state (ties count half)."""
    key = (lambda x: (x[0], x[1])) if by_success else (lambda x: (x[1],))
    score = [1.0 if key(a) > key(b) else 0.5 if key(a) == key(b) else 0.0 for a, b in zip(new, base)]
    return float(np.mean(score))


def summary(outcomes: list[tuple[bool, float]], by_success: bool = True) -> dict[str, Any]:
    """Success rate (None for a task without a success signal) and mean return, with their 95%
    intervals (Wilson; normal), in the schema of ``dpft eval`` and the other methods."""
    n, k = len(outcomes), int(sum(bool(s) for s, _ in outcomes))
    mean, half = mean_ci([float(r) for _, r in outcomes])
    out: dict[str, Any] = {"episodes": n, "success_rate": k / max(n, 1) if by_success else None}
    if by_success:
        out["success_ci95"] = list(wilson_interval(k, n))
    return out | {"return_mean": mean, "return_ci95": half}


def log_eval(writer, row: dict, win: float | None, step: int) -> None:
    if row["success_rate"] is not None:
        writer.add_scalar("eval/success_rate", row["success_rate"], step)
    writer.add_scalar("eval/return_mean", row["return_mean"], step)
    if win is not None:
        writer.add_scalar("eval/win_rate_vs_base", win, step)


def append_round(path: Path, row: dict) -> None:
    """Rewrite evals.jsonl atomically with this round's line (a resumed run may redo a round)."""
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [x for x in lines if x.strip() and json.loads(x)["round"] != row["round"]] + [json.dumps(row)]
    atomic_write_text(path, "\n".join(lines) + "\n")
