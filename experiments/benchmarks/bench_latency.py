"""Latency of one ``predict_chunk`` call: the eager sampler against the captured fast path.

    python experiments/benchmarks/bench_latency.py [--threads 1] [--repeats 300]

Shipped MLP policies (diffusion: Meta-World push and Hopper, 10 DDIM steps) and an untrained
MLP flow policy (10 Euler steps) at batch 1, 8 and 64; median and 90th percentile of
``--repeats`` calls after 30 warm-up calls, one process, nothing else running (the caller makes
sure). ``DPFT_FAST_SAMPLER=0`` is the eager reference loop. Also the largest difference between
the two paths' chunks.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from dpft.base_policies import ArchConfig, FlowPolicy, PolicyConfig, load_policy


def timed(fn, repeats: int) -> tuple[float, float]:
    for _ in range(30):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * float(np.median(ts)), 1000 * float(np.percentile(ts, 90))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policies = {
        "shipped:metaworld-push-v3 (diffusion)": load_policy("shipped:metaworld-push-v3"),
        "shipped:gym-Hopper-v5 (diffusion)": load_policy("shipped:gym-Hopper-v5"),
        "flow, untrained, obs 39, act 4": FlowPolicy(
            PolicyConfig(type="flow", obs_dim=39, action_dim=4, arch=ArchConfig())
        ).eval(),
    }
    lines = [
        f"Command: `python experiments/benchmarks/bench_latency.py --threads {args.threads} --repeats {args.repeats}`",
        "(ms per call, median / p90; torch " + torch.__version__ + f", {torch.get_num_threads()} thread(s)).",
        "",
        "| policy | batch | eager (ms) | fast path (ms) | speed-up | max abs. difference |",
        "|---|---|---|---|---|---|",
    ]
    for name, policy in policies.items():
        for batch in (1, 8, 64):
            obs = torch.randn(batch, policy.obs_horizon, policy.obs_dim)
            noise = torch.randn(batch, *policy.noise_shape)
            os.environ["DPFT_FAST_SAMPLER"] = "0"
            ref = policy.predict_chunk(obs, noise)
            call = lambda p=policy, o=obs, z=noise: p.predict_chunk(o, z)  # noqa: E731
            eager = timed(call, args.repeats)
            os.environ["DPFT_FAST_SAMPLER"] = "1"
            diff = (policy.predict_chunk(obs, noise) - ref).abs().max().item()
            fast = timed(call, args.repeats)
            lines.append(
                f"| {name} | {batch} | {eager[0]:.2f} / {eager[1]:.2f} | {fast[0]:.2f} / {fast[1]:.2f} | "
                f"{eager[0] / fast[0]:.1f}x | {diff:.1e} |"
            )
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
