"""Threads per process: BC training and chunk sampling alone and beside a second process.

    python experiments/benchmarks/bench_threads.py

Each cell starts fresh processes of ``--worker`` (8 s of BC steps on the shipped push policy,
batch 256, then 4 s of ``predict_chunk`` at batch 8) with the given OpenMP settings, one alone
or two at once, and reports each process's BC steps/s and ms per chunk.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def worker() -> None:
    import torch

    from dpft.base_policies import load_policy

    policy = load_policy("shipped:metaworld-push-v3").train()
    opt = torch.optim.Adam(policy.parameters(), 1e-4)
    obs, act = torch.randn(256, 2, 39), torch.rand(256, 8, 4) * 2 - 1
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < 8:
        loss, _ = policy(obs, act)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += 1
    bc = n / (time.perf_counter() - t)
    policy.eval()
    o8, z = torch.randn(8, 2, 39), torch.randn(8, 8, 4)
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < 4:
        policy.predict_chunk(o8, z)
        n += 1
    print(f"{bc:.1f} {4000 / n:.2f}", flush=True)


def cell(threads: int, procs: int, passive: bool) -> list[tuple[float, float]]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    ps = [
        subprocess.Popen([sys.executable, __file__, "--worker"], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(procs)
    ]
    return [tuple(map(float, p.communicate()[0].split())) for p in ps]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    if ap.parse_args().worker:
        return worker()
    lines = [
        "Command: `python experiments/benchmarks/bench_threads.py` (os.cpu_count() = " + str(os.cpu_count()) + ").",
        "",
        "| threads per process | processes at once | OMP_WAIT_POLICY | BC steps/s (each) "
        "| ms per chunk, batch 8 (each) |",
        "|---|---|---|---|---|",
    ]
    cells = [(1, 1, False), (2, 1, False), (2, 1, True), (1, 2, False), (2, 2, False), (2, 2, True)]
    for threads, procs, passive in cells:
        res = cell(threads, procs, passive)
        bc = " / ".join(f"{b:.1f}" for b, _ in res)
        ms = " / ".join(f"{c:.2f}" for _, c in res)
        lines.append(f"| {threads} | {procs} | {'PASSIVE' if passive else 'default'} | {bc} | {ms} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
