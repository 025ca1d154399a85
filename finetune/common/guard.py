"""``--final guarded``: deploy a fine-tuned policy only once it has beaten the base on episodes of its own.

Why: fine-tuning can make a policy worse before it makes it better. DSRL's periodic evaluations
on the mixed-data Meta-World bases fall far below the base mid-run (0.00-0.30 against 0.55-0.67,
``experiments/results/dsrl_mh_probe.md``), and none of a longer warm-up, a critic warm-up, ten
critics, a higher UTD, wider networks or a looser noise bound stopped that. A user who deploys
what the run holds wants a policy that is never worse than the one they started with, so the
guard keeps a *deployed* policy apart from the one that is learning:

* the deployed policy starts as the base itself;
* at every periodic evaluation the policy being trained (the candidate) is also run on
  ``validation_episodes`` (default ``eval_episodes``) *validation* episodes (seed +
  2,000,000: never trained on, and not the evaluation episodes whose scores the curves report,
  so the choice is not fitted to them);
* the candidate replaces the deployed policy when the lower end of its 95% interval on the
  validation episodes (Wilson for a success rate, normal for a return) is above the base's
  score there, and its own score is at least the deployed policy's;
* ``policy/`` ends as the deployed policy, which may be the base unchanged: ``final_eval.json``
  says which (``deployed``: ``base`` or ``fine-tuned``, with its env steps).

The deployed policy's score on the evaluation episodes costs nothing extra: those episodes are
fixed and the policy is deterministic given them, so it is the score it got when it was the
candidate (the base's is measured when the run starts or resumes). TensorBoard
``eval/deployed_*`` and the ``deployed`` field of ``evals.jsonl`` are that curve; ``eval/*``
stays the learning policy's.

Every deployment is kept in ``guarded/<env_steps>/`` with ``guarded.json``; a resumed run forgets
the ones after the checkpoint it continues from, as :mod:`.best` does.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpft.base_policies.infra.state_io import atomic_write_text
from dpft.base_policies.policy import Policy

FOLDER, RECORD = "guarded", "guarded.json"
VALIDATION_SEED_OFFSET = 2_000_000  # evaluation episodes use seed + 1,000,000, training seed + i

Evaluate = Callable[[Policy], dict[str, Any]]


def point(summary: dict[str, Any]) -> float:
    """The score compared: the success rate where the task defines one, else the mean return."""
    success = summary.get("success_rate")
    return float(summary["return_mean"]) if success is None else float(success)


def lower_bound(summary: dict[str, Any]) -> float:
    """Lower end of the score's 95% interval (an undefined return interval counts as no evidence)."""
    if summary.get("success_rate") is not None:
        return float(summary["success_ci95"][0])
    half = float(summary.get("return_ci95", math.nan))
    return -math.inf if math.isnan(half) else float(summary["return_mean"]) - half


def row(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in ("success_rate", "return_mean", "episodes")}


class Guard:
    """The deployed policy of a guarded run; ``writes`` is False on processes other than the main one
    (they run the same evaluations, since those are split across processes, and decide the same)."""

    def __init__(self, root: Path, writes: bool = True) -> None:
        self.dir, self.record, self.writes = Path(root) / FOLDER, Path(root) / RECORD, writes
        self.state: dict[str, Any] = json.loads(self.record.read_text()) if self.record.exists() else {}
        self.validate: Evaluate | None = None  # set by start(): how candidates are validated

    def start(self, base: Policy, validate: Evaluate, evaluate: Evaluate, env_steps: int) -> None:
        """Measure the base, keep ``validate`` for the candidates, and forget deployments after
        ``env_steps`` (a resumed run). The base is measured on every start, resumed or not: the
        evaluations are split across the processes of a multi-process run, so every process must
        run them, whatever files it sees."""
        self.validate = validate
        measured = {"val": validate(base), "eval": evaluate(base)}
        self.state = {"base": measured, "deployments": self.state.get("deployments", [])}
        kept = [d for d in self.state["deployments"] if d["env_steps"] <= env_steps]
        for dropped in self.state["deployments"][len(kept) :]:
            if self.writes:
                shutil.rmtree(self.dir / str(dropped["env_steps"]), ignore_errors=True)
        self.state["deployments"] = kept
        self._save()

    @property
    def deployed(self) -> dict[str, Any]:
        """The deployed policy's record: its env steps (0: the base), validation and evaluation."""
        return self.state["deployments"][-1] if self.state["deployments"] else {"env_steps": 0, **self.state["base"]}

    def passes(self, val: dict[str, Any]) -> bool:
        """A candidate's validation beats the base with 95% confidence and is no worse than the deployed one's.
        Strictly above: a candidate that fails every validation episode of a base that fails them
        all (lower end 0 against 0) has shown nothing."""
        return lower_bound(val) > point(self.state["base"]["val"]) and point(val) >= point(self.deployed["val"])

    def offer(self, policy: Policy, summary: dict[str, Any], val: dict[str, Any], env_steps: int) -> dict[str, Any]:
        """Deploy ``policy`` (evaluated as ``summary``, validated as ``val``) if it passes; returns
        the row for the deployed curve."""
        repeated = env_steps == self.deployed["env_steps"]  # the final policy may be the last evaluated one
        if not repeated and self.passes(val):
            if self.writes:
                policy.save(self.dir / str(env_steps))  # the folder first, then the record
            self.state["deployments"].append({"env_steps": env_steps, "val": val, "eval": summary})
            self._save()
        deployed = self.deployed
        return {**row(deployed["eval"]), "env_steps": deployed["env_steps"], "val": point(deployed["val"])}

    def deployed_policy_dir(self) -> Path | None:
        """Where the deployed fine-tuned policy is saved; None while it is the base."""
        steps = self.deployed["env_steps"]
        return self.dir / str(steps) if self.state["deployments"] else None

    def _save(self) -> None:
        if self.writes:
            atomic_write_text(self.record, json.dumps(self.state, indent=2))
