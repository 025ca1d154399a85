"""Env steps/s of ``dpft eval`` and ``dpft collect`` with 1 and 2 processes and 1/4/8 envs each.

    python experiments/benchmarks/bench_scaling.py --out experiments/results/scaling.md

Meta-World push, 200-step episodes: ``eval`` of the shipped base policy (2 episodes per env) and
``collect`` with the scripted expert (action noise 0.3, 2 episodes per env); each process has
one torch thread. Steps/s is what the command reports (rollouts only, start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = {**os.environ, "DPFT_THREADS": "1", "OMP_NUM_THREADS": "1"}


def dpft(args: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "dpft.finetune.cli", *args], env=ENV, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"dpft {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--episodes-per-env", type=int, default=2)
    args = ap.parse_args()
    lines = [
        "| command | processes | envs per process | episodes | env steps/s | vs 1 process, same envs per process |",
        "|---|---|---|---|---|---|",
    ]
    one: dict[tuple[str, int], float] = {}
    for command in ("eval", "collect"):
        for per in (1, 4, 8):
            for procs in (1, 2):
                envs = per * procs
                episodes = args.episodes_per_env * envs
                common = ["--task", "metaworld:push-v3", "--envs", str(envs), "--episodes", str(episodes)]
                common += ["--no-progress", "--processes", str(procs)]
                if command == "eval":
                    res = dpft(["eval", "--policy", "shipped:metaworld-push-v3", *common, "--json"])
                    rate = json.loads(res.stdout.strip().splitlines()[-1])["env_steps_per_s"]
                else:
                    with tempfile.TemporaryDirectory() as tmp:
                        res = dpft(["collect", *common, "--action-noise", "0.3", "--out", f"{tmp}/d.hdf5"])
                    rate = float(re.search(r"([\d.]+) env steps/s", res.stdout).group(1))
                if procs == 1:
                    one[(command, per)] = rate
                ratio = rate / one[(command, per)]
                lines.append(f"| {command} | {procs} | {per} | {episodes} | {rate:.0f} | {ratio:.2f}x |")
                print(lines[-1], flush=True)
    text = "Command: `python experiments/benchmarks/bench_scaling.py`\n\n" + "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
