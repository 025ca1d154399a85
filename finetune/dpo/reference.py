"""SePPO's reference selection: each round's reference is an earlier policy, drawn at random.

After round ``r`` the policy is kept in ``OUT/references/round_NNN.safetensors``; round ``r + 1``'s
reference is drawn uniformly from the base and the policies after rounds ``0..r`` ("random
checkpoint replay"): a reference that is sometimes older than the last round keeps the on-policy
reference samples varied and the policy from drifting with its own latest mistakes. The draw
depends only on the run's seed and the round, so a resumed run (or another process) draws the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from dpft.base_policies.checkpoint import load_weights
from dpft.base_policies.infra.state_io import atomic_dir
from dpft.base_policies.policy import DenoisingPolicy

FOLDER = "references"


def keep_round_policy(root: Path, r: int, policy: DenoisingPolicy) -> None:
    """Write round ``r``'s policy where later rounds can draw it as their reference."""
    with atomic_dir(root / FOLDER / f"round_{r:03d}") as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}, str(tmp / "model.safetensors")
        )


def draw(seed: int, next_round: int) -> int:
    """The reference of ``next_round``: -1 for the base, ``k`` for the policy after round ``k``."""
    return int(np.random.default_rng([seed, next_round]).integers(next_round + 1)) - 1


def load_reference(ref: DenoisingPolicy, root: Path, choice: int, base: Callable[[], DenoisingPolicy]) -> str:
    """Load the drawn policy into ``ref``; returns what it is, for the log."""
    if choice < 0:
        ref.load_state_dict(base().state_dict())
        return "the base"
    load_weights(ref, root / FOLDER / f"round_{choice:03d}", "model.safetensors")
    return f"the policy after round {choice}"
