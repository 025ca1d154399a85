"""Reading weights and policy configs from a folder, with one clear error for every way it can
be wrong. Below :mod:`policy` and :mod:`checkpoint`, so neither needs a deferred import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from dpft.base_policies.config import PolicyConfig
from dpft.base_policies.infra.errors import CheckpointError, ConfigError
from dpft.base_policies.infra.records import check_record, from_dict


def policy_config_from_meta(path: Path, meta: dict[str, Any]) -> PolicyConfig:
    """The :class:`PolicyConfig` stored in ``path/config.json``: every key present and typed as
    declared (a missing or mistyped key is never replaced by a default; see ``check_record``)."""
    body = {k: v for k, v in meta.items() if k != "format_version"}
    try:
        check_record(PolicyConfig, body)
        return from_dict(PolicyConfig, body)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path / 'config.json'} is invalid: {e}") from None


def load_weights(module: torch.nn.Module, path: Path, filename: str = "model.safetensors") -> None:
    """Load safetensors weights into ``module``, turning every failure into a clear message."""
    file = path / filename
    if not file.exists():
        raise CheckpointError(f"{path} is incomplete: {filename} is missing")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file} is corrupt or truncated ({e}); re-export or re-download it") from None
    load_state(module, state, file)


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], file: Path) -> None:
    """Load ``state`` (read from ``file``) into ``module`` after checking names, shapes and values."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{file} does not match its config.json: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{file}: tensor {key!r} has shape {tuple(tensor.shape)} but config.json implies "
                f"{tuple(expected[key].shape)}"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{file} contains non-finite values in {key} ({bad} of {tensor.numel()} are NaN or inf); the run "
                "that wrote it probably diverged: use an earlier checkpoint or retrain (e.g. with a lower --lr)"
            )
    module.load_state_dict(state)
