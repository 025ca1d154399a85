"""The front page's results table, built from the benchmarks' raw result files (never typed).

    python experiments/benchmarks/summary_table.py            # rewrites the table in README.md
    python experiments/benchmarks/summary_table.py --check    # exit 1 if README.md's table is stale

One row per base, one column per method: the mean over seeds of the final policy's score on the
base's 100 episodes (seed 2000; success rate, or return on locomotion) with the number of seeds,
beside the base's own score on the same episodes with N(0, I) noise. A method that has not run
on a base shows '–'. The per-benchmark tables with curves, intervals and commands are the
results files the column headers link to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results"
START, END = "<!-- summary-table:start -->", "<!-- summary-table:end -->"
BASES = (  # (row name, folder name in the benchmarks)
    ("push-mh", "push-mh"),
    ("drawer-open-mh", "drawer-open-mh"),
    ("button-press-mh", "button-press-mh"),
    ("pick-place-mh", "pick-place-mh"),
    ("peg-insert-side-mh", "peg-insert-side-mh"),
    ("door-open-near-perfect", "door-open-near-perfect"),
    ("Hopper-medium", "hopper-medium"),
    ("Walker2d-medium", "walker2d-medium"),
    ("HalfCheetah-medium", "halfcheetah-medium"),
    ("push (2 demos)", "push"),
    ("pick-place (2 demos)", "pick-place"),
    ("Hopper (narrow)", "hopper"),
)
METHODS = (  # (column, benchmark, method folder)
    ("DSRL-NA", "dsrl", "na"),
    ("FIND", "dsrl", "find"),
    ("DPPO", "dsrl", "dppo"),
    ("residual-TD3", "residual", "td3"),
    ("residual-TD3, UTD 2", "residual", "td3-utd2"),
    ("residual-TD3, full range", "residual", "td3-scale1"),
    ("residual-TD3 + demos", "residual", "td3-demos"),
    ("residual-TD3 + demos, TD3+BC, full range", "residual", "td3-demos-bc2.5-scale1"),
    ("Diffusion-DPO", "dpo", "diffusion-dpo"),
    ("DPO, chunk pairs", "dpo", "diffusion-dpo-chunk"),
    ("DPO, chunk pairs, beta 1000", "dpo", "diffusion-dpo-chunk-b1000"),
    ("SePPO, chunk pairs", "dpo", "seppo-chunk"),
    ("filtered BC, best of mode and a sample", "dpo", "filtered-bc-mode-best-1round"),
)


def score(path: Path) -> float | None:
    if not path.exists():
        return None
    row = json.loads(path.read_text())
    return row["success_rate"] if row.get("success_rate") is not None else row["return_mean"]


def cell(values: list[float], success: bool) -> str:
    if not values:
        return "–"
    mean = np.mean(values)
    return (f"{mean:.2f}" if success else f"{mean:.0f}") + f" (n={len(values)})"


def table() -> str:
    head = ["base", "base, N(0, I)"] + [f"[{c}](experiments/results/{b}_bench.md)" for c, b, _ in METHODS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, folder in BASES:
        base = None
        for _, bench, _ in METHODS:
            base = base if base is not None else score(RESULTS / f"{bench}_bench" / folder / "base_normal.json")
        if base is None:
            continue
        success = base <= 1.0
        cells = []
        for _, bench, method in METHODS:
            runs = sorted((RESULTS / f"{bench}_bench" / folder / method).glob("seed*/final_seed2000.json"))
            cells.append(cell([s for s in (score(p) for p in runs) if s is not None], success))
        lines.append(f"| {name} | {cell([base], success).split(' (')[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    readme = (ROOT / "README.md").read_text()
    before, rest = readme.split(START)
    _, after = rest.split(END)
    new = f"{before}{START}\n{table()}\n{END}{after}"
    if args.check:
        sys.exit(0 if new == readme else 1)
    (ROOT / "README.md").write_text(new)


if __name__ == "__main__":
    main()
