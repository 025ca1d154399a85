"""The learning curve and the deployed curve of ``--final guarded`` runs, side by side.

    python experiments/benchmarks/guard_curves.py RUN [RUN ...]        # markdown table on stdout

``RUN/final_seed2000.json``, when there, is ``dpft eval --policy RUN --episodes 100 --seed 2000
--json`` (the DSRL benchmark's 100 final episodes) and fills the last column.

A guarded run (:mod:`dpft.finetune.common.guard`) evaluates the policy being trained on the fixed
evaluation episodes, as every run does, and keeps a deployed policy (the base until a policy beats
it with 95% confidence on separate validation episodes). This prints, per run, both curves on the
evaluation episodes, the base's score on them, and how many points of each fell below the base:
the issue's "no dip below the base" for the policy that learns and for the one a user would get.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dpft.finetune.common.guard import RECORD, point


def fmt(x: float, ref: float) -> str:
    return f"{x:.2f}" if ref <= 1 else f"{x:.0f}"


def curves(run: Path) -> dict:
    """One run's evaluations, deployed scores, base score and final record."""
    evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines() if line.strip()]
    if not evals or "deployed" not in evals[0]:
        raise SystemExit(f"guard_curves: {run} is not a --final guarded run (no 'deployed' in evals.jsonl)")
    record = json.loads((run / RECORD).read_text())
    final = json.loads((run / "final_eval.json").read_text()) if (run / "final_eval.json").exists() else None
    base = point(record["base"]["eval"])
    learn = [point(e) for e in evals]
    deployed = [point(e["deployed"]) for e in evals]
    return {
        "run": run.name,
        "steps": [e["env_steps"] for e in evals],
        "learn": learn,
        "deployed": deployed,
        "switches": [e["deployed"]["env_steps"] for e in evals],
        "base": base,
        "base_val": point(record["base"]["val"]),
        "final": final,
        "final100": load(run / "final_seed2000.json"),
    }


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def table(runs: list[dict]) -> list[str]:
    lines = [
        "| run | base (eval / val) | learning policy: evaluations | below base | deployed policy: evaluations "
        "| below base | first deployed | policy/ at the end | policy/, 100 ep. |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        b = r["base"]
        first = next((s for s in r["switches"] if s > 0), None)
        final, f100 = r["final"], r["final100"]
        cells = [
            r["run"],
            f"{fmt(b, b)} / {fmt(r['base_val'], b)}",
            " ".join(fmt(x, b) for x in r["learn"]),
            f"{sum(x < b for x in r['learn'])} of {len(r['learn'])}",
            " ".join(fmt(x, b) for x in r["deployed"]),
            f"{sum(x < b for x in r['deployed'])} of {len(r['deployed'])}",
            "never" if first is None else f"{first // 1000}k",
            "–" if final is None else f"{final['deployed']}, {final['policy_env_steps'] // 1000}k",
            "–" if f100 is None else fmt(point(f100), b),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print("\n".join(table([curves(r) for r in args.runs])))


if __name__ == "__main__":
    main()
