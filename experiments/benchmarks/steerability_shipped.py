"""`dpft steerability` on every shipped base: one JSON per base and the table of them.

    python experiments/benchmarks/steerability_shipped.py run      # resumable: skips bases already measured
    python experiments/benchmarks/steerability_shipped.py report   # -> results/steerability_shipped.md

Each base: ``dpft steerability --policy shipped:NAME --states 50 --streams 8 --json`` (seed 2000,
8 envs; Meta-World episodes end at success). Results in ``results/steerability_shipped/NAME.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "experiments" / "results" / "steerability_shipped"
BASES = [
    "metaworld-push-v3",
    "metaworld-drawer-open-v3",
    "metaworld-button-press-v3",
    "metaworld-pick-place-v3",
    "gym-Hopper-v5",
    "gym-Walker2d-v5",
    # mixed-data bases (dpft collect --demonstrators) and the near-perfect one
    "metaworld-push-v3-mh",
    "metaworld-drawer-open-v3-mh",
    "metaworld-button-press-v3-mh",
    "metaworld-pick-place-v3-mh",
    "metaworld-peg-insert-side-v3-mh",
    "metaworld-door-open-v3-near-perfect",
    # D4RL-style medium locomotion (BC on a SAC policy at about a third of the expert's return)
    "gym-Hopper-v5-medium",
    "gym-Walker2d-v5-medium",
    "gym-HalfCheetah-v5-medium",
]
FLAGS = ["--states", "50", "--streams", "8", "--json", "--no-progress"]


def run() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    from dpft.base_policies.checkpoint import shipped_policies

    for name in BASES:
        if (OUT / f"{name}.json").exists() or name not in shipped_policies():
            continue
        cmd = [sys.executable, "-m", "dpft.finetune", "steerability", "--policy", f"shipped:{name}", *FLAGS]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            raise SystemExit(f"{name}: {res.stderr[-2000:]}")
        (OUT / f"{name}.json").write_text(res.stdout.strip().splitlines()[-1] + "\n")
        print(name, "done", flush=True)


def ci(d: dict, key: str) -> str:
    lo, hi = d[f"{key}_ci95"]
    return f"{d[key]:.2f} [{lo:.2f}, {hi:.2f}]"


def report() -> None:
    rows = [
        "# `dpft steerability` on the shipped bases",
        "",
        "Command per base: `dpft steerability --policy shipped:NAME --states 50 --streams 8 --json` (start-state",
        "seed 2000, 8 envs, noise streams seeded 10000+k; Meta-World episodes end at success), run by",
        "`python experiments/benchmarks/steerability_shipped.py run`. 95% intervals: Wilson (success),",
        "normal approximation over start states (return).",
        "",
        "| base | base, N(0, I) | base, zero noise | best-of-8 | noise-sensitive states | chunk spread ratio "
        "| reading |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in BASES:
        path = OUT / f"{name}.json"
        if not path.exists():
            rows.append(f"| {name} | not measured yet | | | | | |")
            continue
        d = json.loads(path.read_text())
        if "base_success" in d:
            cells = [ci(d, "base_success"), ci(d, "zero_noise_success"), ci(d, "best_of_k_success")]
            cells.append(ci(d, "noise_sensitive_states"))
        else:
            cells = [
                f"{d[k]:.0f} ± {d[k + '_ci95']:.0f}" for k in ("base_return", "zero_noise_return", "best_of_k_return")
            ] + ["n/a (return)"]
        reading = "DSRL has room" if d["dsrl_has_room"] else "little room: residual"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {d.get('spread_ratio', float('nan')):.2f} | {reading} |")
    (OUT.parent / "steerability_shipped.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    {"run": run, "report": report}[sys.argv[1]]()
