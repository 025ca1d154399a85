"""Env steps/s of ``dpft eval``, ``dpft collect`` and DSRL-NA with 1 and 2 processes and 1/4/8 envs each.

    python experiments/benchmarks/bench_scaling.py --out experiments/results/scaling.md
    python experiments/benchmarks/bench_scaling.py --dsrl   # the DSRL-NA table of scaling.md

Meta-World push, 200-step episodes: ``eval`` of the shipped base policy (2 episodes per env) and
``collect`` with the scripted expert (action noise 0.3, 2 episodes per env); each process has
one torch thread. Steps/s is what the command reports (rollouts only, start-up excluded).

``--dsrl``: ``dpft finetune dsrl`` with the DSRL benchmark's push settings
(``experiments/configs/bench/dsrl_push.yaml``: DSRL-NA, one gradient step per transition per
process) for ``--dsrl-steps`` env steps over all processes; the rate is the one of the second half
of the run (after the warm-up, from the run's ``time/env_steps_per_s`` TensorBoard scalar at the
middle and at the end), and the wall-clock per 100k env steps is 100k over it.
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
    res = subprocess.run([sys.executable, "-m", "dpft.finetune", *args], env=ENV, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"dpft {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res


def tb_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def dsrl_rate(procs: int, envs: int, steps: int) -> tuple[float, float]:
    """(env steps/s of the second half of a DSRL-NA run, minutes it took in all)."""
    import time

    cfg = Path(__file__).resolve().parents[1] / "configs" / "bench" / "dsrl_push.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        args = ["finetune", "dsrl", "--config", str(cfg), "--steps", str(steps), "--eval-every", str(steps // 2)]
        args += ["--eval-episodes", "1", "--checkpoint-every", str(10 * steps), "--envs", str(envs)]
        args += ["--out", f"{tmp}/run", "--no-progress", "--processes", str(procs)]
        t0 = time.perf_counter()
        dpft(args)
        minutes = (time.perf_counter() - t0) / 60
        (s1, r1), (s2, r2) = tb_scalars(Path(tmp) / "run" / "tb", "time/env_steps_per_s")[-2:]
    # rates are averages since training started: t = steps / rate at each reading
    return (s2 - s1) / (s2 / r2 - s1 / r1), minutes


def main_dsrl(args) -> None:
    lines = [
        "| processes | envs per process | env steps/s (second half) | wall-clock per 100k env steps (min) "
        "| vs 1 process, same envs per process | whole run (min) |",
        "|---|---|---|---|---|---|",
    ]
    one: dict[int, float] = {}
    for per in (1, 4, 8):
        for procs in (1, 2):
            rate, minutes = dsrl_rate(procs, per, args.dsrl_steps)
            one.setdefault(per, rate)
            lines.append(
                f"| {procs} | {per} | {rate:.0f} | {100_000 / rate / 60:.1f} | {rate / one[per]:.2f}x | {minutes:.1f} |"
            )
            print(lines[-1], flush=True)
    cmd = f"python experiments/benchmarks/bench_scaling.py --dsrl --dsrl-steps {args.dsrl_steps}"
    text = f"Command: `{cmd}`\n\n" + "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--episodes-per-env", type=int, default=2)
    ap.add_argument("--dsrl", action="store_true", help="measure DSRL-NA instead of eval and collect")
    ap.add_argument("--dsrl-steps", type=int, default=12_000)
    args = ap.parse_args()
    if args.dsrl:
        return main_dsrl(args)
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
