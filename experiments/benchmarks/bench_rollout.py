"""Env steps/s of a rollout: random actions vs a base diffusion policy vs a DSRL-steered policy.

    python experiments/benchmarks/bench_rollout.py --out experiments/results/rollout_bench.md [--threads 1]

For each task and number of envs, steps the chunked vector env (obs_horizon 2, pred_horizon 8,
action_horizon 4) for a fixed number of env steps, once with uniformly random chunks and once
with an MLP diffusion policy (10 DDIM steps) called once per vector step. The policy is
untrained (same cost as a trained one) so the benchmark needs no checkpoint; the steered policy
is that base plus an untrained 256x2 noise actor (the cost of steering at rollout time).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dpft.base_policies import ArchConfig, DiffusionPolicy, PolicyConfig
from dpft.base_policies.sb3_actor import SquashedMeanActor
from dpft.envs.config import EnvConfig
from dpft.finetune.common.rollout import policy_chunk_fn
from dpft.finetune.dsrl.steered import SteeredPolicy


def steps_per_s(cfg: EnvConfig, chunk_fn, env_steps: int) -> float:
    venv = cfg.make_vector(2, 8, 4)
    obs, _ = venv.reset(seed=0)
    done_steps, t = 0, time.perf_counter()
    while done_steps < env_steps:
        obs, _, _, _, infos = venv.step(chunk_fn(obs))
        done_steps += int(np.sum(infos.get("steps", 4)))
    elapsed = time.perf_counter() - t
    venv.close()
    return done_steps / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--env-steps", type=int, default=4000)
    ap.add_argument("--envs", type=int, nargs="*", default=[1, 4, 8, 16])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        "| task | envs | random actions (steps/s) | base diffusion policy (steps/s) | base / random | "
        "DSRL-steered policy (steps/s) |",
        "|---|---|---|---|---|---|",
    ]
    for task in ("gym:Hopper-v5", "metaworld:push-v3"):
        probe = EnvConfig(task=task, envs=1).make_env()
        obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
        low, high = probe.action_space.low, probe.action_space.high
        probe.close()
        policy = DiffusionPolicy(PolicyConfig(obs_dim=obs_dim, action_dim=act_dim, arch=ArchConfig())).eval()
        actor = SquashedMeanActor(policy.obs_horizon * obs_dim, [256, 256], int(np.prod(policy.noise_shape)))
        steered = SteeredPolicy(policy, actor, {"action_magnitude": 1.5, "hidden": [256, 256]})
        rng = np.random.default_rng(0)
        for n in args.envs:
            cfg = EnvConfig(task=task, envs=n)

            def random_fn(obs, rng=rng, low=low, high=high, act_dim=act_dim):
                return rng.uniform(low, high, (len(obs), 8, act_dim)).astype(np.float32)

            r = steps_per_s(cfg, random_fn, args.env_steps)
            p = steps_per_s(cfg, policy_chunk_fn(policy, torch.Generator().manual_seed(0)), args.env_steps)
            s = steps_per_s(cfg, policy_chunk_fn(steered), args.env_steps)
            lines.append(f"| {task} | {n} | {r:.0f} | {p:.0f} | {p / r:.2f} | {s:.0f} |")
            print(lines[-1], flush=True)
    text = (
        f"Measured with `python experiments/benchmarks/bench_rollout.py --threads {args.threads} --env-steps "
        f"{args.env_steps}` ({args.env_steps} env steps per cell, torch threads {torch.get_num_threads()}).\n\n"
        + "\n".join(lines)
        + "\n"
    )
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
