"""Benchmark BC training throughput and chunk-sampling latency on this machine.

    python experiments/benchmarks/bench_base_policy.py --out experiments/results/base_policy_bench.md
    python experiments/benchmarks/bench_base_policy.py --device cuda --batch-size 256 4096 --batches 1 64 1024

On a GPU the sampling timer synchronises the device before reading the clock.

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


def bc_steps_per_s(
    dataset: Path, policy: str, backbone: str, steps: int, tmp: Path, warm: int, device: str, batch: int
) -> float:
    def run(n: int, name: str) -> float:
        cfg = TrainBCConfig(
            dataset=dataset,
            out=tmp / name,
            policy=policy,
            backbone=backbone,
            arch=ARCH,
            steps=n,
            batch_size=batch,
            device=device,
            checkpoint_every=10**9,
            val_every=10**9,
            progress=False,
        )
        t = time.perf_counter()
        train_bc(cfg)
        return time.perf_counter() - t

    name = f"{policy}-{backbone}-{batch}"
    if device.startswith("cuda"):
        run(warm, f"{name}-init")  # pays CUDA's one-time start-up, which would otherwise land in "short"
    short, long = run(warm, f"{name}-short"), run(warm + steps, f"{name}-long")
    return steps / (long - short)


def sampling_latency_ms(policy, batch: int, repeats: int) -> tuple[float, float]:
    obs = torch.randn(batch, policy.obs_horizon, policy.obs_dim, device=policy.device)
    noise = torch.randn(batch, *policy.noise_shape, device=policy.device)
    sync = torch.cuda.synchronize if policy.device.type == "cuda" else (lambda: None)
    policy.predict_chunk(obs, noise)
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        policy.predict_chunk(obs, noise)
        sync()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), float(np.percentile(times, 90))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--train-steps", type=int, default=300, help="timed steps for the MLP backbone")
    ap.add_argument("--unet-train-steps", type=int, default=40, help="timed steps for the (slow) U-Net")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[256], help="BC batch sizes")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64], help="sampling batch sizes")
    args = ap.parse_args()
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    rng = np.random.default_rng(0)
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, device {args.device} ({where}). Command: `python "
        f"experiments/benchmarks/bench_base_policy.py --train-steps {args.train_steps} --unet-train-steps "
        f"{args.unet_train_steps} --repeats {args.repeats} --device {args.device} --batch-size "
        f"{' '.join(map(str, args.batch_size))} --batches {' '.join(map(str, args.batches))}`.",
        "",
        "## BC training throughput (obs 39 x 2, chunk 8 x 4)",
        "",
        "| policy | backbone | parameters | batch | steps/s |",
        "|---|---|---|---|---|",
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
                n = sum(
                    p.numel()
                    for p in policy_type(policy)(
                        PolicyConfig(type=policy, backbone=backbone, obs_dim=39, action_dim=4, arch=ARCH)
                    ).parameters()
                )
                for batch in args.batch_size:
                    sps = bc_steps_per_s(
                        tmp / "d.hdf5", policy, backbone, n_steps, tmp, max(10, n_steps // 6), args.device, batch
                    )
                    lines.append(f"| {policy} | {backbone} | {n / 1e6:.2f} M | {batch} | {sps:.0f} |")
                    print(lines[-1], flush=True)
    lines += [
        "",
        f"## Sampling latency per `predict_chunk` call, ms (median / p90 of {args.repeats})",
        "",
        "| policy | backbone | steps | " + " | ".join(f"B={b}" for b in args.batches) + " |",
        "|---|---|---|" + "---|" * len(args.batches),
    ]
    torch.manual_seed(0)
    for policy in ("diffusion", "flow"):
        for backbone in ("mlp", "unet"):
            for k in (5, 10, 20):
                arch = ArchConfig(obs_horizon=2, pred_horizon=8, action_horizon=4, num_inference_steps=k)
                p = (
                    policy_type(policy)(
                        PolicyConfig(type=policy, backbone=backbone, obs_dim=39, action_dim=4, arch=arch)
                    )
                    .eval()
                    .to(args.device)
                )
                cells = [sampling_latency_ms(p, b, args.repeats) for b in args.batches]
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
