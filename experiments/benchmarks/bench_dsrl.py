"""DSRL benchmark: run the plan, resume what a session cut off, and write the table and curves.

    python experiments/benchmarks/bench_dsrl.py run --workers 2          # all pending runs
    python experiments/benchmarks/bench_dsrl.py run --only push          # one task
    python experiments/benchmarks/bench_dsrl.py report                   # table + PNG from what finished

Plan, per task (configs in ``experiments/configs/bench/dsrl_<task>.yaml``): the base policy
evaluated with N(0, I) and with zero noise, both on 100 episodes (seed 2000) and on exactly the
start states of each run's periodic evaluations (seed 1,000,000 + run seed), so every number in
a row is compared with the base on the same episodes; DSRL-NA with seeds 0-2; DSRL-SAC and SAC
from scratch with seed 0, all on the same budget, reward and evaluation schedule. A finished
DSRL run's policy is also evaluated on the base's 100 episodes (``final_seed2000.json``).
Each run is a subprocess with one thread; a run folder with a checkpoint and no
``final_eval.json`` is continued with ``--resume``, a finished one is skipped. Results live
under ``runs/bench_dsrl/<task>/<method>/seed<k>/``; ``report`` copies their small files
(evaluations, configs) to ``experiments/results/dsrl_bench/`` and builds the table from there,
so finished runs are kept in git and are not run again by a later session.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "experiments" / "configs" / "bench"
RUNS = ROOT / "runs" / "bench_dsrl"
RESULTS = ROOT / "experiments" / "results"
RAW = RESULTS / "dsrl_bench"  # the small result files of every run, committed (runs/ is not)
KEEP = ("evals.jsonl", "final_eval.json", "final_seed2000.json", "config.yaml", "config.json")
TASKS = ("push", "drawer-open", "button-press", "hopper")
METHODS = {"na": (0, 1, 2), "sac": (0,), "scratch": (0,)}
MILESTONES = (10_000, 25_000, 50_000, 100_000)
BASE_EVAL = {"episodes": 100, "seed": 2000}
TRAIN_EVAL_SEED = 1_000_000  # DSRLCallback.evaluate: seed + 1,000,000, min(8, episodes) envs


@dataclass
class Job:
    task: str
    method: str
    seed: int

    @property
    def out(self) -> Path:
        return RUNS / self.task / self.method / f"seed{self.seed}"

    def command(self) -> list[str]:
        cfg_path = CONFIGS / f"dsrl_{self.task}.yaml"
        resume = (self.out / "checkpoint").exists()
        if self.method == "scratch":
            cfg = yaml.safe_load(cfg_path.read_text())
            task = cfg.get("task") or task_of(cfg["base"])
            cmd = [sys.executable, str(ROOT / "experiments/benchmarks/sac_scratch.py"), "--task", task]
            cmd += ["--seed", str(self.seed), "--steps", str(cfg["steps"]), "--out", str(self.out)]
            cmd += ["--eval-every", str(cfg["eval_every"]), "--eval-episodes", str(cfg["eval_episodes"])]
            cmd += ["--reward", cfg["reward"]] if cfg.get("reward") else []
            return cmd + (["--resume"] if resume else [])
        dpft = [sys.executable, "-m", "dpft.finetune.cli", "finetune", "dsrl"]
        if resume:
            return [*dpft, "--out", str(self.out), "--resume", "--no-progress"]
        return [*dpft, "--config", str(cfg_path), "--variant", self.method, "--seed", str(self.seed)] + [
            "--out",
            str(self.out),
            "--no-progress",
        ]


def task_of(base: str) -> str:
    from dpft.base_policies import load_policy

    return load_policy(base).config.task


def run_job(job: Job) -> str:
    if (job.out / "final_eval.json").exists() or (RAW / job.out.relative_to(RUNS) / "final_eval.json").exists():
        return f"{job.task}/{job.method}/seed{job.seed}: done already"
    job.out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with (job.out.parent / f"seed{job.seed}.log").open("a") as log:
        code = subprocess.call(job.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return f"{job.task}/{job.method}/seed{job.seed}: exit {code}"


def dpft_eval(policy: str, out: Path, episodes: int, seed: int, flags: list[str], reward: str | None) -> None:
    """``dpft eval --json`` into ``out`` unless it is there already (in runs/ or in the committed copy)."""
    if out.exists() or (out.is_relative_to(RUNS) and (RAW / out.relative_to(RUNS)).exists()):
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "dpft.finetune.cli", "eval", "--policy", policy, "--json", "--no-progress"]
    cmd += ["--episodes", str(episodes), "--seed", str(seed), "--envs", str(min(8, episodes)), *flags]
    cmd += ["--reward", reward] if reward else []
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if res.returncode != 0:
        raise SystemExit(f"evaluation of {policy} failed:\n{res.stderr}")
    out.write_text(res.stdout.strip().splitlines()[-1])


def base_evals(task: str) -> None:
    """The base with N(0, I) and with zero noise: on 100 episodes, and on each seed's training-eval episodes."""
    cfg = yaml.safe_load((CONFIGS / f"dsrl_{task}.yaml").read_text())
    for name, flags in (("base_normal", []), ("base_zero", ["--zero-noise"])):
        dpft_eval(
            cfg["base"],
            RUNS / task / f"{name}.json",
            BASE_EVAL["episodes"],
            BASE_EVAL["seed"],
            flags,
            cfg.get("reward"),
        )
        for seed in sorted({s for seeds in METHODS.values() for s in seeds}):
            out = RUNS / task / "base_on_train_evals" / f"{name}_seed{seed}.json"
            dpft_eval(cfg["base"], out, cfg["eval_episodes"], TRAIN_EVAL_SEED + seed, flags, cfg.get("reward"))


def final_evals(task: str) -> None:
    """Each finished DSRL run's steered policy on the base's 100 episodes."""
    cfg = yaml.safe_load((CONFIGS / f"dsrl_{task}.yaml").read_text())
    for job in (Job(task, m, s) for m, seeds in METHODS.items() if m != "scratch" for s in seeds):
        if (job.out / "final_eval.json").exists():
            out = job.out / "final_seed2000.json"
            dpft_eval(str(job.out), out, BASE_EVAL["episodes"], BASE_EVAL["seed"], [], cfg.get("reward"))


def cmd_run(args) -> None:
    tasks = [t for t in TASKS if not args.only or t in args.only]
    for t in tasks:
        base_evals(t)
    # task-major order, so one task's row is complete before the next task starts
    jobs = [Job(t, m, s) for t in tasks for m, seeds in METHODS.items() for s in seeds]
    with ThreadPoolExecutor(args.workers) as pool:
        for msg in pool.map(run_job, jobs):
            print(msg, flush=True)
    cmd_evals(args)


def cmd_evals(args) -> None:
    for t in [t for t in TASKS if not args.only or t in args.only]:
        base_evals(t)
        final_evals(t)


# ---------------------------------------------------------------- report


def score(row: dict) -> float:
    return row["success_rate"] if row.get("success_rate") is not None else row["return_mean"]


def at(evals: list[dict], steps: int) -> float | None:
    hits = [score(r) for r in evals if r["env_steps"] == steps]
    return hits[-1] if hits else None


def fmt(values: list[float], success: bool) -> str:
    if not values:
        return "–"
    digits = 2 if success else 0
    mean = f"{np.mean(values):.{digits}f}"
    if len(values) == 1:
        return mean
    return f"{mean} ± {np.std(values, ddof=1):.{digits}f} (n={len(values)})"


def sync() -> None:
    """Copy every run's small result files (and the base evaluations) from runs/ into RAW."""
    import shutil

    if not RUNS.exists():
        return
    for f in RUNS.rglob("*"):
        rel = f.relative_to(RUNS)
        is_base = f.suffix == ".json" and ("base_on_train_evals" in rel.parts or len(rel.parts) == 2)
        if f.is_file() and (f.name in KEEP or is_base) and "checkpoint" not in rel.parts and "policy" not in rel.parts:
            (RAW / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, RAW / rel)
    # The final policy artifact of every finished run, when it is small: a steered policy on a
    # shipped base names the base instead of copying it (a few hundred kB), so any table row can
    # be re-evaluated with `dpft eval --policy experiments/results/dsrl_bench/TASK/METHOD/seedS/policy`.
    for policy in RUNS.glob("*/*/seed*/policy"):
        if (policy / "config.json").exists() and not (policy / "base").exists():
            shutil.copytree(policy, RAW / policy.relative_to(RUNS), dirs_exist_ok=True)


def load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def cmd_report(args) -> None:
    from dpft.finetune.common.eval_log import read_evals

    sync()

    lines = [
        "# DSRL benchmark (generated by `python experiments/benchmarks/bench_dsrl.py report`)",
        "",
        "Runs: `python experiments/benchmarks/bench_dsrl.py run --workers 2` (settings in",
        "`experiments/configs/bench/dsrl_<task>.yaml`: 100k env steps, DSRL-NA seeds 0-2, DSRL-SAC and SAC",
        "from scratch seed 0; Meta-World with a sparse success reward that ends the episode, Hopper with",
        "its own dense reward), then `... evals` for the 100-episode evaluations.",
        "",
        "Score: evaluation success rate (Meta-World) or return (Hopper) of the steered policy's mean noise,",
        "30 episodes (Hopper: 10) per periodic evaluation, evaluation seed 1,000,000 + run seed. Mean ± standard",
        "deviation over seeds (n = seeds that reached that step). 'base on these episodes' is the base policy",
        "on exactly those evaluation start states (N(0, I) noise / zero noise, mean over the same seeds);",
        "SAC from scratch evaluates on its own start states (one env, seeds 1,000,000 + i), so its base column",
        "is only indicative. 'final, 100 ep.' is the steered policy after the whole budget against the base",
        "(N(0, I) / zero noise) on 100 episodes, seed 2000. Wall-clock: training time including periodic",
        "evaluations, finished runs only, two runs sharing this 2-core machine. '–': not reached yet.",
        "",
        "| task | method | base on these episodes | 10k | 25k | 50k | 100k | final, 100 ep. (base) | wall (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    curves, na_final = {}, {}
    for task in TASKS:
        base100 = {n: load_json(RAW / task / f"{n}.json") for n in ("base_normal", "base_zero")}
        success = task != "hopper"  # the only task without a success signal
        for method, seeds in METHODS.items():
            found = [(s, read_evals(RAW / task / method / f"seed{s}" / "evals.jsonl")) for s in seeds]
            found = [(s, r) for s, r in found if r]
            if not found:
                continue
            runs = [r for _, r in found]
            curves[(task, method)] = runs
            base_cells = []
            for name in ("base_normal", "base_zero"):
                evs = [load_json(RAW / task / "base_on_train_evals" / f"{name}_seed{s}.json") for s, _ in found]
                vals = [score(e) for e in evs if e]
                base_cells.append(fmt([float(np.mean(vals))], success) if vals else "–")
            cells = [fmt([v for v in (at(r, m) for r in runs) if v is not None], success) for m in MILESTONES]
            finals = [load_json(RAW / task / method / f"seed{s}" / "final_seed2000.json") for s, _ in found]
            final = fmt([score(f) for f in finals if f], success)
            if method == "na" and success and any(finals):
                na_final[task] = float(np.mean([score(f) for f in finals if f]))
            final += " (n=1)" if len(found) > 1 and sum(f is not None for f in finals) == 1 else ""
            ref = " / ".join(fmt([score(b)], success) if b else "–" for b in base100.values())
            finished = [s for s, _ in found if (RAW / task / method / f"seed{s}" / "final_eval.json").exists()]
            wall = fmt([r[-1]["wall_s"] / 60 for s, r in found if s in finished], False)
            row = [task, f"{method} (n={len(runs)})", " / ".join(base_cells), *cells, f"{final} ({ref})", wall]
            lines.append("| " + " | ".join(row) + " |")
    plan = [Job(t, m, s) for t in TASKS for m, seeds in METHODS.items() for s in seeds]
    done = [j for j in plan if (RAW / j.out.relative_to(RUNS) / "final_eval.json").exists()]
    pending = [f"{j.task}/{j.method}/seed{j.seed}" for j in plan if j not in done]
    lines += [
        "",
        f"Finished runs: {len(done)} of {len(plan)} in the plan.",
        "Target, >= 0.90 success within 100k env steps (DSRL-NA, 100 episodes): "
        + ", ".join(f"{t} {'met' if v >= 0.9 else 'not met'} ({v:.2f})" for t, v in na_final.items())
        + ". How much the noise can change each base's outcome at all: [steerability.md](steerability.md).",
    ]
    if pending:
        lines.append(f"Not finished (partial curves above where started): {', '.join(pending)}.")
    (RESULTS / "dsrl_bench.md").write_text("\n".join(lines) + "\n")
    plot(curves)
    print("\n".join(lines))


def plot(curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(k[0] == t for k in curves)]
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in METHODS:
            runs = curves.get((task, method))
            if not runs:
                continue
            steps = sorted({r["env_steps"] for run in runs for r in run})
            vals = [[v for v in (at(run, s) for run in runs) if v is not None] for s in steps]
            mean = np.array([np.mean(v) for v in vals])
            lo = np.array([np.min(v) for v in vals])
            hi = np.array([np.max(v) for v in vals])
            ax.plot(steps, mean, label=f"{method} (n={len(runs)})")
            ax.fill_between(steps, lo, hi, alpha=0.2)
        for name, style, label in (("base_normal", ":", "base, N(0, I)"), ("base_zero", "--", "base, zero noise")):
            evs = [load_json(f) for f in sorted((RAW / task / "base_on_train_evals").glob(f"{name}_seed*.json"))]
            if evs:  # on the same evaluation episodes as the curves
                ax.axhline(np.mean([score(e) for e in evs]), color="gray", ls=style, label=label)
        success = task != "hopper"
        ax.set_title(f"{task} (band: min-max over seeds)")
        ax.set_xlabel("environment steps")
        ax.set_ylabel("success rate" if success else "return")
        if success:
            ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "dsrl_curves.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--only", nargs="*", choices=TASKS)
    e = sub.add_parser("evals", help="only the base and final evaluations (run does them too)")
    e.add_argument("--only", nargs="*", choices=TASKS)
    sub.add_parser("report")
    args = ap.parse_args()
    {"run": cmd_run, "evals": cmd_evals, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
