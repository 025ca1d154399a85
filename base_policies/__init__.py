"""Base policies: diffusion and flow policies with controllable noise, BC training, checkpoints.

The names below are imported on first use (PEP 562), so a lower-level import such as
``dpft.base_policies.infra.errors`` (which ``dpft.envs`` needs) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_policy": "checkpoint",
    "ArchConfig": "config",
    "PolicyConfig": "config",
    "DiffusionPolicy": "diffusion",
    "FlowPolicy": "flow",
    "ComposedPolicy": "composed",
    "CheckpointError": "infra.errors",
    "ConfigError": "infra.errors",
    "DatasetError": "infra.errors",
    "DpftError": "infra.errors",
    "FileError": "infra.files",
    "TaskError": "infra.errors",
    "TrainingError": "infra.errors",
    "POLICY_TYPES": "policy",
    "DenoisingPolicy": "policy",
    "Policy": "policy",
    "register_policy": "policy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
