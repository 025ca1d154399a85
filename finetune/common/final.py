"""What ``OUT/policy`` holds at the end of a run, and the ``final_eval.json`` that describes it.

One rule for every method that fine-tunes a base (DSRL, residual, FIND, DPPO on the SB3 loop; DPO
in rounds): ``--final last`` keeps the last policy; ``--final best`` the best evaluated one
(:mod:`.best`); ``--final guarded`` the deployed one, which may be the base itself (:mod:`.guard`).
The record always says which (``final``), the scores are the chosen policy's on the run's
evaluation episodes with their 95% intervals, and a guarded run adds the validation scores it was
deployed on and the last policy's own scores (``last``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dpft.base_policies.checkpoint import load_policy
from dpft.base_policies.policy import Policy
from dpft.finetune.common.best import BestPolicy
from dpft.finetune.common.guard import Guard, row


def choose_final(
    last_policy: Policy,
    last: dict[str, Any],
    record: dict[str, Any],
    best: BestPolicy | None,
    guard: Guard | None,
    base: Callable[[], Policy],
    device: torch.device,
    steps_key: str,
) -> tuple[Policy, dict[str, Any]]:
    """(the policy to save as ``OUT/policy``, the ``final_eval.json`` record). ``last``: the last
    policy's evaluation summary; ``record``: what the run adds (its steps, wall-clock, processes,
    ``final``); ``base``: loads the base (only called when the guard kept it); ``steps_key``: the
    record's name for the chosen policy's steps (env steps, or a DPO run's gradient steps)."""
    policy, final = last_policy, {**last, **record}
    if best is not None and best.best() is not None:
        chosen = best.best()
        policy = load_policy(best.dir, device)
        final = {**final, **chosen["eval"], steps_key: chosen["env_steps"]}
    if guard is not None:
        chosen, folder = guard.deployed, guard.deployed_policy_dir()
        policy = base() if folder is None else load_policy(folder, device)
        final = {
            **final,
            **chosen["eval"],
            "deployed": "base" if folder is None else "fine-tuned",
            steps_key: chosen["env_steps"],
            "validation": row(chosen["val"]),
            "last": row(last),
        }
    return policy, final
