"""DSRL-NA on one base with its sampling settings changed: executed chunk length, denoising steps.

    python experiments/benchmarks/sampling_probe.py run [--only NAME ...]   # resumable
    python experiments/benchmarks/sampling_probe.py report                 # markdown table on stdout

Neither setting needs a re-trained base. ``action_horizon`` is how many of the ``pred_horizon``
predicted actions the wrapper executes before it asks for a new chunk (the base was trained on
the whole chunk, so any value in 1..pred_horizon is one it has predicted), and
``num_inference_steps`` is how many DDIM steps share the 100 training noise levels. Each variant
is a copy of the shipped base whose ``config.json`` differs in one field, written by ``dpft
set-sampling`` (the command a user runs for the same), then passed as ``--base FOLDER``.

Per variant: the changed base with N(0, I) and zero noise on the benchmark seed's 30 evaluation
episodes (``dpft eval --seed 1000000``), then ``dpft finetune dsrl`` with the benchmark's config,
40k env steps, seed 0, on it: the section-3 probes of ``dsrl_mh_probe.md`` with one more knob.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROW = "drawer-open-mh"
SHIPPED = ROOT / "base_policies" / "shipped" / "metaworld-drawer-open-v3-mh"
CONFIG = ROOT / "experiments" / "configs" / "bench" / f"dsrl_{ROW}.yaml"
REWARD = "sparse_success(terminate=True)"
WORK = ROOT / "runs" / "probe" / "sampling"
RESULTS = ROOT / "experiments" / "results" / "dsrl_mh_probe"
STEPS, SEED, EVAL_SEED, EPISODES = 40_000, 0, 1_000_000, 30
VARIANTS = {  # name: (arch field, value); the shipped base has action_horizon 4, 10 denoising steps
    "ah2": ("action_horizon", 2),
    "ah8": ("action_horizon", 8),
    "steps5": ("num_inference_steps", 5),
    "steps20": ("num_inference_steps", 20),
}
KEEP = ("config.yaml", "evals.jsonl", "final_eval.json", "base_normal.json", "base_zero.json")


def dpft(*args: str, log: Path | None = None) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dpft.finetune", *args]
    with open(log, "a") if log else open(os.devnull, "w") as err:
        res = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)} (log: {log})")
    return res.stdout


def base_copy(name: str) -> Path:
    """The shipped base with one sampling setting changed (``dpft set-sampling``)."""
    field, value = VARIANTS[name]
    folder = WORK / "bases" / name
    if not (folder / "config.json").exists():
        flag = {"action_horizon": "--action-horizon", "num_inference_steps": "--denoising-steps"}[field]
        args = ["--policy", f"shipped:{SHIPPED.name}", "--out", str(folder), flag, str(value), "--overwrite"]
        dpft("set-sampling", *args)
    return folder


def run(name: str) -> None:
    base, out = base_copy(name), WORK / name
    out.mkdir(parents=True, exist_ok=True)
    for file, flags in (("base_normal.json", []), ("base_zero.json", ["--zero-noise"])):
        if not (out / file).exists():
            args = ["eval", "--policy", str(base), "--episodes", str(EPISODES), "--seed", str(EVAL_SEED)]
            text = dpft(*args, "--envs", "8", "--reward", REWARD, "--json", "--no-progress", *flags)
            (out / file).write_text(text.strip().splitlines()[-1])
    run_dir = out / "run"
    if not (run_dir / "final_eval.json").exists():
        resume = ["--resume"] if (run_dir / "checkpoint").exists() else []
        args = ["--config", str(CONFIG), "--base", str(base), "--steps", str(STEPS), "--seed", str(SEED)]
        dpft("finetune", "dsrl", *args, "--out", str(run_dir), "--no-progress", *resume, log=out / "train.log")
    keep = RESULTS / f"{ROW}-{name}"
    keep.mkdir(parents=True, exist_ok=True)
    for file in KEEP:
        src = out / file if (out / file).exists() else run_dir / file
        if src.exists():
            shutil.copyfile(src, keep / file)
    print(f"{name}: done", flush=True)


def score(record: dict) -> float:
    return record["success_rate"]


def report() -> None:
    print(
        "| name | setting | base on these episodes (N(0, I) / zero) | evaluations at 5k, 10k, ..., 40k (30 ep.) "
        "| below base | at 40k | wall (min) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (field, value) in VARIANTS.items():
        keep = RESULTS / f"{ROW}-{name}"
        if not (keep / "evals.jsonl").exists():
            continue
        normal, zero = (json.loads((keep / f).read_text()) for f in ("base_normal.json", "base_zero.json"))
        evals = [json.loads(line) for line in (keep / "evals.jsonl").read_text().splitlines() if line.strip()]
        curve = " ".join(f"{score(e):.2f}" for e in evals)
        below = sum(score(e) < score(normal) for e in evals)
        final = json.loads((keep / "final_eval.json").read_text()) if (keep / "final_eval.json").exists() else None
        last = f"{score(final):.2f}" if final else "–"
        print(
            f"| {name} | `{field}` {value} | {score(normal):.2f} / {score(zero):.2f} | {curve} "
            f"| {below} of {len(evals)} | {last} | {evals[-1]['wall_s'] / 60:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS))
    args = parser.parse_args()
    if args.command == "report":
        report()
        return
    for name in args.only or VARIANTS:
        run(name)


if __name__ == "__main__":
    main()
