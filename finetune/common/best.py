"""``--final best``: the run's ``policy/`` is the best evaluated policy, not the last one.

Fine-tuning can make a policy worse before it makes it better (or never better): a user who
starts from a good base wants what the run found at its best. Every periodic evaluation (the same
fixed episodes each time) offers its policy; the best so far is kept in ``best_policy/`` with
``best_policy.json`` (its env steps and evaluation). Better means a higher success rate, ties
broken by the mean return (tasks without a success flag: the return). At the end the final policy
is offered too, and ``policy/`` becomes the best one; ``final_eval.json`` then describes it.

A resumed run forgets a best found after the checkpoint it continues from (it is found again,
since a resumed run replays exactly what the stopped one did).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from dpft.base_policies.infra.state_io import atomic_write_text
from dpft.base_policies.policy import Policy

FOLDER, RECORD = "best_policy", "best_policy.json"


def score(summary: dict[str, Any]) -> tuple[float, float]:
    """(success rate or -inf, mean return): compared as a tuple."""
    success = summary.get("success_rate")
    return (-math.inf if success is None else float(success), float(summary["return_mean"]))


class BestPolicy:
    """The best evaluated policy of a run, kept in the run folder."""

    def __init__(self, root: Path) -> None:
        self.dir, self.record = Path(root) / FOLDER, Path(root) / RECORD

    def best(self) -> dict[str, Any] | None:
        return json.loads(self.record.read_text()) if self.record.exists() else None

    def forget_after(self, env_steps: int) -> None:
        """Drop a best found after ``env_steps`` (a run resumed from an earlier checkpoint)."""
        best = self.best()
        if best is not None and best["env_steps"] > env_steps:
            self.record.unlink()
            shutil.rmtree(self.dir, ignore_errors=True)

    def offer(self, policy: Policy, summary: dict[str, Any], env_steps: int) -> bool:
        """Keep ``policy`` if it beats the best so far; True when it did."""
        best = self.best()
        if best is not None and score(summary) <= score(best["eval"]):
            return False
        policy.save(self.dir)  # atomic, then the record: a kill between them leaves a newer folder, never a torn one
        atomic_write_text(self.record, json.dumps({"env_steps": env_steps, "eval": summary}, indent=2))
        return True
