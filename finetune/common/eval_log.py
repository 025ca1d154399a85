"""``evals.jsonl``: one JSON line per periodic evaluation of a training run.

Machine-readable twin of TensorBoard's ``eval/*`` scalars (benchmark tables and learning
curves are made from it). On ``--resume`` the lines written after the checkpoint being
resumed are dropped, because those steps are trained again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dpft.base_policies.infra.state_io import atomic_write_text


def append_eval(path: Path, row: dict[str, Any]) -> None:
    with Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")


def read_evals(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trim_evals(path: Path, env_steps: int) -> None:
    """Keep only evaluations made at or before ``env_steps``."""
    if Path(path).exists():
        kept = [r for r in read_evals(path) if r["env_steps"] <= env_steps]
        atomic_write_text(Path(path), "".join(json.dumps(r) + "\n" for r in kept))
