"""How much can the initial noise change a base policy's outcome? An upper-bound probe for DSRL.

DSRL can only pick among behaviours the frozen base produces for *some* noise. This probe runs
the base on the same start states (env seed fixed) K times, each time with a different stream
of N(0, I) noises, and once with zero noise. Per task it reports:

* mean success over the K noise streams (the base as usually evaluated);
* best-of-K: the share of start states solved by at least one stream. A noise policy that only
  had to find *one* good stream per start state could reach this; it is a rough ceiling for
  steering within N(0, I)'s typical set, not a bound (a learned noise can be atypical and is
  chosen per step, with feedback);
* noise-sensitive states: the share of start states whose outcome differs between streams --
  the only states where changing the noise changed anything at all.

    python experiments/benchmarks/steerability.py --tasks push drawer-open button-press

Writes ``experiments/results/steerability.md`` (and prints it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from base_policies import load_policy
from envs.config import EnvConfig
from finetune.rollout import policy_chunk_fn, run_episodes
from finetune.stats import wilson_interval

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"


def outcomes(task: str, states: int, streams: int, seed: int, envs: int) -> tuple[np.ndarray, np.ndarray]:
    """Success [streams, states] with N(0, I) noise streams 0..K-1, and [states] with zero noise."""
    policy = load_policy(f"shipped:metaworld-{task}-v3")
    cfg = EnvConfig(task=policy.config.task, seed=seed, envs=envs, reward="sparse_success(terminate=True)")

    def run(fn) -> np.ndarray:
        venv = cfg.make_vector(policy.obs_horizon, policy.pred_horizon, policy.action_horizon)
        try:  # same env seed every time: episode j of env i starts from the same state in every run
            return np.array([r.success for r in run_episodes(fn, venv, states, seed=seed)], dtype=float)
        finally:
            venv.close()

    noisy = np.stack([run(policy_chunk_fn(policy, torch.Generator().manual_seed(10_000 + k))) for k in range(streams)])
    return noisy, run(policy_chunk_fn(policy, zero_noise=True))


def row(task: str, noisy: np.ndarray, zero: np.ndarray, seconds: float) -> str:
    k, n = noisy.shape
    per_stream = noisy.mean(axis=1)
    best = noisy.max(axis=0)
    sensitive = (noisy.max(axis=0) != noisy.min(axis=0)).mean()
    lo, hi = wilson_interval(int(best.sum()), n)
    cells = [
        task,
        f"{per_stream.mean():.2f} ± {per_stream.std(ddof=1):.2f}",
        f"{zero.mean():.2f}",
        f"{best.mean():.2f} [{lo:.2f}, {hi:.2f}]",
        f"{sensitive:.2f}",
        f"{seconds / 60:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["push", "drawer-open", "button-press"])
    ap.add_argument("--states", type=int, default=50)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--envs", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lines = [
        "# Steerability of the shipped Meta-World base policies",
        "",
        f"Command: `python experiments/benchmarks/steerability.py --tasks {' '.join(args.tasks)} "
        f"--states {args.states} --streams {args.streams} --seed {args.seed} --envs {args.envs}`",
        "",
        f"{args.states} start states (env seed {args.seed}), each run with {args.streams} N(0, I) noise streams "
        "(generator seeds 10000+k) and once with zero noise; sparse success, episode ends on success.",
        "Best-of-K: start states solved by at least one stream (95% Wilson interval). Noise-sensitive: start",
        "states whose outcome differs between streams.",
        "",
        f"| task | base, N(0, I), mean ± sd over {args.streams} streams | base, zero noise | "
        f"best-of-{args.streams} | noise-sensitive states | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for task in args.tasks:
        t0 = time.perf_counter()
        noisy, zero = outcomes(task, args.states, args.streams, args.seed, args.envs)
        lines.append(row(task, noisy, zero, time.perf_counter() - t0))
        print(lines[-1], flush=True)
    (RESULTS / "steerability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
