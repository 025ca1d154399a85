"""Meta-World's bundled scripted policies, looked up from the task name."""

from __future__ import annotations

import warnings

import numpy as np

from dpft.base_policies.infra.errors import TaskError
from dpft.envs.experts import register_expert

# Task names whose policy class is not the CamelCase of the task name.
_RENAMED = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}


@register_expert("metaworld")
def metaworld_expert(name: str):
    import metaworld.policies as policies

    cls_name = _RENAMED.get(name) or "Sawyer" + "".join(p.capitalize() for p in name.split("-")) + "Policy"
    cls = getattr(policies, cls_name, None)
    if cls is None:
        raise TaskError(f"Meta-World has no scripted policy for {name!r} (looked for {cls_name})")
    policy = cls()

    def expert(obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips actions anyway
            warnings.simplefilter("ignore", UserWarning)
            return np.stack([policy.get_action(o.astype(np.float64)) for o in obs]).astype(np.float32)

    return expert
