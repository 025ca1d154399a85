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

    python experiments/benchmarks/steerability.py --streams 32           # -> results/steerability.md
    python experiments/benchmarks/steerability.py --spread --states 20   # -> results/steerability_spread.md

``--spread`` measures instead how far apart the chunks for different noises are at one
observation, against how much the chunk changes between observations.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dpft.base_policies import load_policy
from dpft.envs.config import EnvConfig
from dpft.finetune.common.rollout import policy_chunk_fn, run_episodes
from dpft.finetune.common.stats import wilson_interval

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


@torch.no_grad()
def chunk_spread(task: str, states: int, noises: int, seed: int) -> tuple[float, float]:
    """How far apart the executed chunks for different noises are, against how much the chunk
    varies between situations: (mean std across ``noises`` N(0, I) noises at one observation,
    std of the zero-noise chunk across observations), both in env action units, over the
    decisions of zero-noise episodes from ``states`` start states (start ``i`` seeded seed + i)."""
    policy = load_policy(f"shipped:metaworld-{task}-v3")
    cfg = EnvConfig(task=policy.config.task, seed=seed, envs=1, reward="sparse_success(terminate=True)")
    zero = policy_chunk_fn(policy, zero_noise=True)
    gen = torch.Generator().manual_seed(seed)
    k = policy.action_horizon

    def probe(obs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The zero-noise chunk, with the spread of ``noises`` noisy chunks at the same observation."""
        n = len(obs)
        noise = torch.randn(n * noises, *policy.noise_shape, generator=gen)
        x = torch.from_numpy(obs).repeat_interleave(noises, 0)
        chunks = policy.predict_chunk(x, noise)[:, :k].unflatten(0, (n, noises))
        spread = chunks.std(dim=1).flatten(1).mean(dim=1)
        mode = zero(obs)
        return mode, {"spread": spread.cpu().numpy(), "mode": mode[:, :k]}

    venv = cfg.make_vector(policy.obs_horizon, policy.pred_horizon, policy.action_horizon)
    try:  # one start state at a time, so the noises are drawn in the same order for any `states`
        results = [r for i in range(states) for r in run_episodes(probe, venv, 1, seed=seed + i)]
    finally:
        venv.close()
    within = np.concatenate([r.decisions["spread"] for r in results]).astype(np.float64)
    modes = np.concatenate([r.decisions["mode"] for r in results]).reshape(len(within), -1)
    return float(within.mean()), float(modes.std(axis=0).mean())


def row(task: str, noisy: np.ndarray, zero: np.ndarray, seconds: float) -> str:
    n = noisy.shape[1]
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


def streams_table(args) -> list[str]:
    lines = [
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
    return lines


def spread_table(args) -> list[str]:
    lines = [
        f"Along zero-noise episodes from {args.states} start states (env seed {args.seed}): the std of the",
        "executed chunk across 32 N(0, I) noises at one observation, against the std of the zero-noise chunk",
        "across observations (env action units, mean over action coordinates).",
        "",
        "| task | across noises, same observation | across observations, zero noise | ratio |",
        "|---|---|---|---|",
    ]
    for task in args.tasks:
        w, a = chunk_spread(task, args.states, 32, args.seed)
        lines.append(f"| {task} | {w:.3f} | {a:.3f} | {w / a:.2f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["push", "drawer-open", "button-press"])
    ap.add_argument("--states", type=int, default=50)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--envs", type=int, default=5)
    ap.add_argument("--spread", action="store_true", help="measure chunk spread instead (-> steerability_spread.md)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    flags = f"--tasks {' '.join(args.tasks)} --states {args.states} --seed {args.seed}"
    flags += " --spread" if args.spread else f" --streams {args.streams} --envs {args.envs}"
    lines = [
        "# Steerability of the shipped Meta-World base policies" + (": chunk spread" if args.spread else ""),
        "",
        f"Command: `python experiments/benchmarks/steerability.py {flags}`",
        "",
        *(spread_table(args) if args.spread else streams_table(args)),
    ]
    out = RESULTS / ("steerability_spread.md" if args.spread else "steerability.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
