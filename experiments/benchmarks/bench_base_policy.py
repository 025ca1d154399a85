"""Benchmark BC training throughput and chunk-sampling latency on this machine.

    python experiments/benchmarks/bench_base_policy.py --out experiments/results/base_policy_bench.md

Uses a synthetic dataset with Meta-World-like sizes (obs 39, action 4, 200 episodes of 150
steps); speed does not depend on the values. Training is timed through ``train_bc`` itself
(the real loop: sampling, AdamW, clipping, EMA), as the time difference between a short and a
long run, so start-up costs cancel.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dpft.base_policies import ArchConfig, PolicyConfig
from dpft.base_policies.data import Episode, write_robomimic_hdf5
from dpft.base_policies.policy import policy_type
from dpft.base_policies.train_bc import TrainBCConfig, train_bc

ARCH = ArchConfig(obs_horizon=2, pred_horizon=8, action_horizon=4)


def bc_steps_per_s(dataset: Path, policy: str, backbone: str, steps: int, tmp: Path, warm: int) -> float:
    def run(n: int, name: str) -> float:
        cfg = TrainBCConfig(
            dataset=dataset,
            out=tmp / name,
            policy=policy,
            backbone=backbone,
            arch=ARCH,
            steps=n,
            checkpoint_every=10**9,
            val_every=10**9,
            progress=False,
        )
        t = time.perf_counter()
        train_bc(cfg)
        return time.perf_counter() - t

    short, long = run(warm, f"{policy}-{backbone}-short"), run(warm + steps, f"{policy}-{backbone}-long")
    return steps / (long - short)


def sampling_latency_ms(policy, batch: int, repeats: int) -> tuple[float, float]:
    obs = torch.randn(batch, policy.obs_horizon, policy.obs_dim)
    noise = torch.randn(batch, *policy.noise_shape)
    policy.predict_chunk(obs, noise)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        policy.predict_chunk(obs, noise)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), float(np.percentile(times, 90))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--train-steps", type=int, default=300, help="timed steps for the MLP backbone")
    ap.add_argument("--unet-train-steps", type=int, default=40, help="timed steps for the (slow) U-Net")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}. Command: `python experiments/benchmarks/bench_base_policy.py "
        f"--train-steps {args.train_steps} --unet-train-steps {args.unet_train_steps} --repeats {args.repeats}`.",
        "",
        "## BC training throughput (batch 256, obs 39 x 2, chunk 8 x 4)",
        "",
        "| policy | backbone | parameters | steps/s |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        eps = [
            Episode(
                f"demo_{i}",
                rng.normal(size=(150, 39)).astype(np.float32),
                rng.uniform(-1, 1, size=(150, 4)).astype(np.float32),
            )
            for i in range(200)
        ]
        write_robomimic_hdf5(tmp / "d.hdf5", eps, {"task": "synthetic"})
        for policy in ("diffusion", "flow"):
            for backbone in ("mlp", "unet"):
                n_steps = args.train_steps if backbone == "mlp" else args.unet_train_steps
                sps = bc_steps_per_s(tmp / "d.hdf5", policy, backbone, n_steps, tmp, warm=max(10, n_steps // 6))
                n = sum(
                    p.numel()
                    for p in policy_type(policy)(
                        PolicyConfig(type=policy, backbone=backbone, obs_dim=39, action_dim=4, arch=ARCH)
                    ).parameters()
                )
                lines.append(f"| {policy} | {backbone} | {n / 1e6:.2f} M | {sps:.0f} |")
                print(lines[-1], flush=True)
    lines += [
        "",
        f"## Sampling latency per `predict_chunk` call, ms (median / p90 of {args.repeats})",
        "",
        "| policy | backbone | steps | B=1 | B=8 | B=64 |",
        "|---|---|---|---|---|---|",
    ]
    torch.manual_seed(0)
    for policy in ("diffusion", "flow"):
        for backbone in ("mlp", "unet"):
            for k in (5, 10, 20):
                arch = ArchConfig(obs_horizon=2, pred_horizon=8, action_horizon=4, num_inference_steps=k)
                p = policy_type(policy)(
                    PolicyConfig(type=policy, backbone=backbone, obs_dim=39, action_dim=4, arch=arch)
                ).eval()
                cells = [sampling_latency_ms(p, b, args.repeats) for b in (1, 8, 64)]
                lines.append(
                    f"| {policy} | {backbone} | {k} | " + " | ".join(f"{m:.1f} / {q:.1f}" for m, q in cells) + " |"
                )
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
