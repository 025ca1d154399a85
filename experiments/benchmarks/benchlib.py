"""The fine-tuning benchmark harness: run a plan, resume what a session cut off, write table and curves.

A :class:`Bench` names its tasks, methods and seeds, and how one run is started; everything
else is shared: per task (configs in ``experiments/configs/bench/<bench>_<task>.yaml``) the base
policy evaluated with N(0, I) and with zero noise, on 100 episodes (seed 2000) and on exactly the
start states of each run's periodic evaluations (seed 1,000,000 + run seed), so every number in a
row is compared with the base on the same episodes; each finished run's policy on the base's 100
episodes (``final_seed2000.json``). Each run is a subprocess with one thread; a run folder with a
checkpoint and no ``final_eval.json`` is continued with ``--resume``, a finished one is skipped.
Runs live under ``runs/bench_<bench>/<task>/<method>/seed<k>/``; ``report`` copies their small
files (evaluations, configs, small policy artifacts) to ``experiments/results/<bench>_bench/`` and
builds the table from there, so finished runs are kept in git and are not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "experiments" / "configs" / "bench"
RESULTS = ROOT / "experiments" / "results"
KEEP = ("evals.jsonl", "final_eval.json", "final_seed2000.json", "config.yaml", "config.json", "guarded.json")
MILESTONES = (10_000, 25_000, 50_000, 100_000)
BASE_EVAL = {"episodes": 100, "seed": 2000}
TRAIN_EVAL_SEED = 1_000_000  # evaluate_on_fixed_episodes: seed + 1,000,000, min(8, episodes) envs
SCRATCH = ROOT / "experiments" / "benchmarks" / "sac_scratch.py"


LOCOMOTION = ("hopper", "walker2d", "halfcheetah")


def has_success(task: str) -> bool:
    """Whether a benchmark task (config name) scores success; the locomotion ones score return."""
    return task.split("-")[0] not in LOCOMOTION


@dataclass
class Bench:
    """One benchmark: ``methods`` maps a method to its seeds, ``command(job, cfg_path, resume)``
    starts a run; ``borrowed`` rows (label -> (bench, method)) are read from another benchmark's
    results, for comparison on the same tasks and evaluation episodes."""

    name: str
    tasks: tuple[str, ...]
    methods: dict[str, tuple[int, ...]]
    command: Callable[[Job, Path, bool], list[str]]
    header: list[str]
    borrowed: dict[str, tuple[str, str]] = field(default_factory=dict)
    success_target: float = 0.9
    return_gain_target: float = 0.3
    target_method: str = ""
    footer: list[str] = field(default_factory=list)
    only_on: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Methods run on some tasks only (method -> tasks), e.g. variants tried on one task."""
    keep_policies: bool = True
    """Copy each finished run's policy folder into the results (only when it is small: a policy on a
    shipped base that names the base; a preference-fine-tuned policy is a full copy of the weights)."""
    task_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Seeds run on some tasks only (task -> seeds), e.g. rows added beside the issue's plan; a key
    "task/method" sets one row's seeds and wins over the task's."""

    @property
    def runs(self) -> Path:
        return ROOT / "runs" / f"bench_{self.name}"

    @property
    def raw(self) -> Path:
        """The small result files of every run, committed (runs/ is not)."""
        return RESULTS / f"{self.name}_bench"

    def config(self, task: str) -> Path:
        return CONFIGS / f"{self.name}_{task}.yaml"

    def plan(self) -> list[Job]:
        """Seed 0 of every method on every task first, then the other seeds: a partial run of the
        plan leaves a whole (n = 1) table rather than a few complete rows."""
        jobs = [Job(self, t, m, s) for t in self.tasks for m, seeds in self.methods.items() for s in seeds]
        jobs = [j for j in jobs if j.task in self.only_on.get(j.method, self.tasks)]
        seeds = self.task_seeds
        jobs = [j for j in jobs if j.seed in seeds.get(f"{j.task}/{j.method}", seeds.get(j.task, (j.seed,)))]
        return sorted(jobs, key=lambda j: j.seed)


@dataclass
class Job:
    bench: Bench
    task: str
    method: str
    seed: int

    @property
    def rel(self) -> Path:
        return Path(self.task) / self.method / f"seed{self.seed}"

    @property
    def out(self) -> Path:
        return self.bench.runs / self.rel

    def command(self) -> list[str]:
        saved = (self.out / "checkpoint").exists() or (self.out / ".checkpoint.old").exists()  # see recover_dir
        return self.bench.command(self, self.bench.config(self.task), saved)


def read_bench_config(cfg_path: Path) -> dict:
    """A benchmark config with what it leaves to dpft filled in: the task (the base's), the reward
    and evaluation episodes of the task's preset, and the budget and schedule defaults."""
    from dpft.finetune.commands.cli import read_config_file
    from dpft.finetune.common.presets import preset_for

    cfg = read_config_file(cfg_path)  # with the shared file it extends
    method = cfg_path.name.split("_")[0]
    task = cfg.get("task") or task_of(cfg["base"])
    preset = preset_for(method, task).settings if method in ("dsrl", "residual") else {}  # dpo: no presets
    return {"task": task, "steps": 100_000, "eval_every": 5000, **preset, **cfg}


def scratch_command(job: Job, cfg_path: Path, resume: bool) -> list[str]:
    """SAC from scratch on the task of ``cfg_path``, with its budget, reward and evaluations."""
    cfg = read_bench_config(cfg_path)
    cmd = [sys.executable, str(SCRATCH), "--task", cfg["task"], "--seed", str(job.seed), "--steps", str(cfg["steps"])]
    cmd += ["--out", str(job.out), "--eval-every", str(cfg["eval_every"]), "--eval-episodes", str(cfg["eval_episodes"])]
    cmd += ["--reward", cfg["reward"]]
    return cmd + (["--resume"] if resume else [])


def dpft_command(subcommand: list[str], job: Job, cfg_path: Path, resume: bool, flags: list[str]) -> list[str]:
    """``dpft <subcommand> --config CFG FLAGS --seed S --out OUT``, or ``--resume`` on its run folder."""
    dpft = [sys.executable, "-m", "dpft.finetune", *subcommand]
    if resume:
        return [*dpft, "--out", str(job.out), "--resume", "--no-progress"]
    return [*dpft, "--config", str(cfg_path), *flags, "--seed", str(job.seed), "--out", str(job.out), "--no-progress"]


def task_of(base: str) -> str:
    from dpft.base_policies import load_policy

    return load_policy(base).config.task


def run_job(job: Job) -> str:
    name = f"{job.task}/{job.method}/seed{job.seed}"
    if (job.out / "final_eval.json").exists() or (job.bench.raw / job.rel / "final_eval.json").exists():
        return f"{name}: done already"
    job.out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with (job.out.parent / f"seed{job.seed}.log").open("a") as log:
        code = subprocess.call(job.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return f"{name}: exit {code}"


def dpft_eval(
    bench: Bench, policy: str, out: Path, episodes: int, seed: int, flags: list[str], reward: str | None
) -> None:
    """``dpft eval --json`` into ``out`` unless it is there already (in runs/ or in the committed copy)."""
    if out.exists() or (bench.raw / out.relative_to(bench.runs)).exists():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "dpft.finetune", "eval", "--policy", policy, "--json", "--no-progress"]
    cmd += ["--episodes", str(episodes), "--seed", str(seed), "--envs", str(min(8, episodes)), *flags]
    cmd += ["--reward", reward] if reward else []
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if res.returncode != 0:
        raise SystemExit(f"evaluation of {policy} failed:\n{res.stderr}")
    out.write_text(res.stdout.strip().splitlines()[-1])


def base_evals(bench: Bench, task: str) -> None:
    """The base with N(0, I) and with zero noise: on 100 episodes, and on each seed's training-eval episodes."""
    cfg = read_bench_config(bench.config(task))
    seeds = sorted({s for seeds in bench.methods.values() for s in seeds})
    for name, flags in (("base_normal", []), ("base_zero", ["--zero-noise"])):
        out = bench.runs / task / f"{name}.json"
        dpft_eval(bench, cfg["base"], out, BASE_EVAL["episodes"], BASE_EVAL["seed"], flags, cfg.get("reward"))
        for seed in seeds:
            out = bench.runs / task / "base_on_train_evals" / f"{name}_seed{seed}.json"
            dpft_eval(bench, cfg["base"], out, cfg["eval_episodes"], TRAIN_EVAL_SEED + seed, flags, cfg.get("reward"))


def final_evals(bench: Bench, task: str) -> None:
    """Each finished fine-tuning run's policy on the base's 100 episodes."""
    cfg = read_bench_config(bench.config(task))
    for job in (j for j in bench.plan() if j.task == task and j.method != "scratch"):
        if (job.out / "final_eval.json").exists():
            out = job.out / "final_seed2000.json"
            dpft_eval(bench, str(job.out), out, BASE_EVAL["episodes"], BASE_EVAL["seed"], [], cfg.get("reward"))


def cmd_run(bench: Bench, args) -> None:
    tasks = [t for t in bench.tasks if not args.only or t in args.only]
    for t in tasks:
        base_evals(bench, t)
    methods = args.methods or list(bench.methods)
    jobs = [j for j in bench.plan() if j.task in tasks and j.method in methods]
    jobs = [j for j in jobs if args.seeds is None or j.seed in args.seeds]
    with ThreadPoolExecutor(args.workers) as pool:
        for msg in pool.map(run_job, jobs):
            print(msg, flush=True)
    cmd_evals(bench, args)


def cmd_evals(bench: Bench, args) -> None:
    for t in [t for t in bench.tasks if not args.only or t in args.only]:
        base_evals(bench, t)
        final_evals(bench, t)


# ---------------------------------------------------------------- report


def score(row: dict) -> float:
    return row["success_rate"] if row.get("success_rate") is not None else row["return_mean"]


def at(evals: list[dict], steps: int) -> float | None:
    """The evaluation at ``steps`` env steps; an on-policy run evaluates at the end of the rollout
    that crosses it (FIND: 10,016 for 10k), so the first one within 5% after it counts."""
    hits = [score(r) for r in evals if steps <= r["env_steps"] < steps * 1.05]
    return hits[0] if hits else None


def fmt(values: list[float], success: bool) -> str:
    if not values:
        return "–"
    digits = 2 if success else 0
    mean = f"{np.mean(values):.{digits}f}"
    if len(values) == 1:
        return mean
    return f"{mean} ± {np.std(values, ddof=1):.{digits}f} (n={len(values)})"


def sync(bench: Bench) -> None:
    """Copy every run's small result files (and the base evaluations) from runs/ into the results."""
    import shutil

    if not bench.runs.exists():
        return
    for f in bench.runs.rglob("*"):
        rel = f.relative_to(bench.runs)
        is_base = f.suffix == ".json" and ("base_on_train_evals" in rel.parts or len(rel.parts) == 2)
        if f.is_file() and (f.name in KEEP or is_base) and "checkpoint" not in rel.parts and "policy" not in rel.parts:
            (bench.raw / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, bench.raw / rel)
    # The final policy artifact of every finished run, when it is small: a policy on a shipped base
    # names the base instead of copying it (a few hundred kB), so any table row can be re-evaluated
    # with `dpft eval --policy experiments/results/<bench>_bench/TASK/METHOD/seedS/policy`.
    for policy in bench.runs.glob("*/*/seed*/policy") if bench.keep_policies else ():
        if (policy / "config.json").exists() and not (policy / "base").exists():
            shutil.copytree(policy, bench.raw / policy.relative_to(bench.runs), dirs_exist_ok=True)


def load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def rows_of(bench: Bench, task: str, benches: dict[str, Bench]) -> list[tuple[str, Path, tuple[int, ...]]]:
    """(label, results folder of the method, seeds) for every row of ``task``: borrowed rows first."""
    out = []
    for label, (other, method) in bench.borrowed.items():
        src = benches[other]
        if task in src.tasks and method in src.methods:
            out.append((label, src.raw / task / method, src.methods[method]))
    own = (lambda m: f"{bench.name}-{m}") if bench.borrowed else (lambda m: m)
    out += [(own(m), bench.raw / task / m, seeds) for m, seeds in bench.methods.items()]
    return out


def dip_summary(folder: Path, found: list[tuple[int, list[dict]]]) -> str:
    """How many periodic evaluations (all after the warm-up) fell below the base with N(0, I)
    noise on the same episodes, and the lowest one against its seed's base: the issue's "the
    curve does not dip below the base" made countable. 30-episode evaluations are noisy, so a
    few points under the base can be chance; a drop to a fraction of it is not."""
    below, total, worst = 0, 0, None
    for seed, evals in found:
        base = load_json(folder.parent / "base_on_train_evals" / f"base_normal_seed{seed}.json")
        if not base:
            continue
        ref = score(base)
        total += len(evals)
        below += sum(score(e) < ref for e in evals)
        low = min(evals, key=score)
        if worst is None or score(low) - ref < worst[0] - worst[1]:
            worst = (score(low), ref, low["env_steps"])
    if worst is None:
        return "(no base evaluation)"
    digits = 2 if worst[1] <= 1 else 0
    return f"{below} of {total} (lowest {worst[0]:.{digits}f} at {worst[2] // 1000}k vs {worst[1]:.{digits}f})"


def guarded_summary(folder: Path) -> str | None:
    """For a ``--final guarded`` run: how many of its deployed evaluations fell below the base's
    lower 95% bound on the guard's own base evaluation (the guard's promise: none), or None when
    the run has not recorded one yet."""
    from dpft.finetune.common.guard import lower_bound, point

    record, rows = load_json(folder / "guarded.json"), folder / "evals.jsonl"
    if record is None or not rows.exists():
        return None
    low = lower_bound(record["base"]["eval"])
    evals = [json.loads(x) for x in rows.read_text().splitlines() if x.strip()]
    deployed = [e["deployed"] for e in evals if isinstance(e.get("deployed"), dict)]
    below = sum(point(d) < low for d in deployed)
    return f"{below} of {len(deployed)} deployed evaluations below the base's lower 95% bound ({low:.2f})"


def cmd_report(bench: Bench, args, benches: dict[str, Bench]) -> None:
    from dpft.finetune.common.eval_log import read_evals

    sync(bench)
    lines = [
        *bench.header,
        "",
        "| task | method | base on these episodes | 10k | 25k | 50k | 100k | final, 100 ep. (base) | wall (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    curves, finals_of, gains, n_final, dips, base_final = {}, {}, {}, {}, {}, {}
    for task in bench.tasks:
        base100 = {n: load_json(bench.raw / task / f"{n}.json") for n in ("base_normal", "base_zero")}
        success = has_success(task)
        if base100["base_normal"]:
            base_final[task] = score(base100["base_normal"])
        for label, folder, seeds in rows_of(bench, task, benches):
            found = [(s, read_evals(folder / f"seed{s}" / "evals.jsonl")) for s in seeds]
            found = [(s, r) for s, r in found if r]
            if not found:
                continue
            runs = [r for _, r in found]
            curves[(task, label)] = runs
            base_cells = []
            for name in ("base_normal", "base_zero"):
                evs = [load_json(folder.parent / "base_on_train_evals" / f"{name}_seed{s}.json") for s, _ in found]
                vals = [score(e) for e in evs if e]
                base_cells.append(fmt([float(np.mean(vals))], success) if vals else "–")
            cells = [fmt([v for v in (at(r, m) for r in runs) if v is not None], success) for m in MILESTONES]
            finals = [load_json(folder / f"seed{s}" / "final_seed2000.json") for s, _ in found]
            final = fmt([score(f) for f in finals if f], success)
            if label == bench.target_method:
                dips[task] = dip_summary(folder, found)
            if label == bench.target_method and any(finals):
                finals_of[task] = float(np.mean([score(f) for f in finals if f]))
                n_final[task] = sum(f is not None for f in finals)
                if not success and base100["base_normal"]:
                    gains[task] = finals_of[task] / score(base100["base_normal"]) - 1
            final += " (n=1)" if len(found) > 1 and sum(f is not None for f in finals) == 1 else ""
            ref = " / ".join(fmt([score(b)], success) if b else "–" for b in base100.values())
            finished = [s for s, _ in found if (folder / f"seed{s}" / "final_eval.json").exists()]
            wall = fmt([r[-1]["wall_s"] / 60 for s, r in found if s in finished], False)
            row = [task, f"{label} (n={len(runs)})", " / ".join(base_cells), *cells, f"{final} ({ref})", wall]
            lines.append("| " + " | ".join(row) + " |")
    plan = bench.plan()
    done = [j for j in plan if (bench.raw / j.rel / "final_eval.json").exists()]
    pending = [f"{j.task}/{j.method}/seed{j.seed}" for j in plan if j not in done]
    lines += ["", f"Finished runs: {len(done)} of {len(plan)} in the plan."]
    if bench.target_method:
        method = bench.target_method.removeprefix(f"{bench.name}-") if bench.borrowed else bench.target_method
        n_seeds = len(bench.methods[method])
        verdicts = [
            f"{t} {'met' if v >= bench.success_target else 'not met'} ({v:.2f}"
            + (f" against the base's {base_final[t]:.2f}" if t in base_final else "")
            + (f", {n_final[t]} of {n_seeds} seeds: provisional)" if n_final[t] < n_seeds else ")")
            for t, v in finals_of.items()
            if has_success(t)
        ]
        lines.append(
            f"Target, >= {bench.success_target:.2f} success within 100k env steps "
            f"({bench.target_method}, 100 episodes): " + (", ".join(verdicts) or "no finished run yet") + "."
        )
        if gains:
            lines.append(
                f"Return gain of {bench.target_method} over the base with N(0, I) noise (100 episodes): "
                + ", ".join(f"{t} {g:+.0%}" for t, g in gains.items())
                + f" (target on the medium bases: >= {bench.return_gain_target:+.0%})."
            )
        if dips:
            lines.append(
                f"Periodic evaluations of {bench.target_method} below the base with N(0, I) noise on the same "
                "episodes (all seeds; lowest evaluation and that seed's base in brackets; target: none): "
                + ", ".join(f"{t} {d}" for t, d in dips.items())
                + "."
            )
    guarded = [
        f"{j.task} {j.method} seed {j.seed}: {g}"
        for j in plan
        if j.method.endswith("-guarded") and (g := guarded_summary(bench.raw / j.rel))
    ]
    if guarded:
        lines.append("Guarded rows (`--final guarded`; target: none below): " + "; ".join(guarded) + ".")
    lines += bench.footer
    if pending:
        lines.append(f"Not finished (partial curves above where started): {', '.join(pending)}.")
    (RESULTS / f"{bench.name}_bench.md").write_text("\n".join(lines) + "\n")
    plot(bench, curves)
    print("\n".join(lines))


def plot(bench: Bench, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in bench.tasks if any(k[0] == t for k in curves)]
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (t, label), runs in curves.items():
            if t != task:
                continue
            steps = sorted({r["env_steps"] for run in runs for r in run})
            vals = [[v for v in (at(run, s) for run in runs) if v is not None] for s in steps]
            mean = np.array([np.mean(v) for v in vals])
            lo = np.array([np.min(v) for v in vals])
            hi = np.array([np.max(v) for v in vals])
            ax.plot(steps, mean, label=f"{label} (n={len(runs)})")
            ax.fill_between(steps, lo, hi, alpha=0.2)
        for name, style, label in (("base_normal", ":", "base, N(0, I)"), ("base_zero", "--", "base, zero noise")):
            evs = [load_json(f) for f in sorted((bench.raw / task / "base_on_train_evals").glob(f"{name}_seed*.json"))]
            if evs:  # on the same evaluation episodes as the curves
                ax.axhline(np.mean([score(e) for e in evs]), color="gray", ls=style, label=label)
        success = has_success(task)
        ax.set_title(f"{task} (band: min-max over seeds)")
        ax.set_xlabel("environment steps")
        ax.set_ylabel("success rate" if success else "return")
        if success:
            ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{bench.name}_curves.png", dpi=110)


def main(bench: Bench, benches: dict[str, Bench] | None = None) -> None:
    benches = {bench.name: bench, **(benches or {})}
    ap = argparse.ArgumentParser(description=f"The {bench.name} benchmark (see experiments/benchmarks/benchlib.py).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--only", nargs="*", choices=bench.tasks)
    r.add_argument("--methods", nargs="*", choices=list(bench.methods))
    r.add_argument("--seeds", nargs="*", type=int, help="only these seeds of the plan")
    e = sub.add_parser("evals", help="only the base and final evaluations (run does them too)")
    e.add_argument("--only", nargs="*", choices=bench.tasks)
    sub.add_parser("report")
    args = ap.parse_args()
    if args.cmd == "report":
        cmd_report(bench, args, benches)
    else:
        {"run": cmd_run, "evals": cmd_evals}[args.cmd](bench, args)
