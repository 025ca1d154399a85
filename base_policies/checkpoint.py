"""Loading policy folders: ``config.json`` (type, format version, hyper-parameters) plus
``model.safetensors``. No pickles: loading never runs code stored in the checkpoint.

Every way a folder can be wrong ends in one :class:`CheckpointError` naming the file and
what to do about it.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from base_policies.config import PolicyConfig, from_dict
from base_policies.errors import CheckpointError, ConfigError
from base_policies.policy import FORMAT_VERSION, POLICY_TYPES, Policy

SHIPPED_DIR = Path(__file__).parent / "shipped"
# Policy types defined outside base_policies (fine-tuning artifacts), imported on first use.
BUILTIN_PLUGINS = {"dsrl": "finetune.dsrl.steered"}


def shipped_policies() -> list[str]:
    """Names usable as ``shipped:<name>`` (policies installed with the package)."""
    return sorted(p.name for p in SHIPPED_DIR.glob("*") if (p / "config.json").exists())


def resolve_policy_dir(path: str | Path) -> Path:
    """Accept a policy folder, a run folder with ``policy/`` inside, or ``shipped:<name>``."""
    if str(path).startswith("shipped:"):
        name = str(path).split(":", 1)[1]
        if name not in shipped_policies():
            raise CheckpointError(f"no shipped policy {name!r}; shipped: {shipped_policies()}")
        return SHIPPED_DIR / name
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"policy folder {path} does not exist")
    if not (path / "config.json").exists() and (path / "policy" / "config.json").exists():
        return path / "policy"
    return path


def read_meta(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.exists():
        raise CheckpointError(f"{path} is not a policy folder: config.json is missing")
    try:
        meta = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg} is not valid JSON ({e}); re-export the policy") from None
    if not isinstance(meta, dict) or "type" not in meta:
        raise CheckpointError(f"{cfg} has no 'type' field; is this a dpft policy folder?")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg} has format_version {version!r}; this dpft reads format {FORMAT_VERSION}. "
            "Upgrade dpft or re-export the policy."
        )
    return meta


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> Policy:
    """Load any policy folder (base, steered, residual) and return it in eval mode."""
    path = resolve_policy_dir(path)
    meta = read_meta(path)
    if meta["type"] not in POLICY_TYPES and meta["type"] in BUILTIN_PLUGINS:
        importlib.import_module(BUILTIN_PLUGINS[meta["type"]])  # registers the type
    cls = POLICY_TYPES.get(meta["type"])
    if cls is None:
        raise CheckpointError(
            f"{path / 'config.json'} has unknown policy type {meta['type']!r}; known: {sorted(POLICY_TYPES)}"
        )
    policy = cls.from_folder(path, meta)
    return policy.to(device)


def policy_config_from_meta(path: Path, meta: dict[str, Any]) -> PolicyConfig:
    body = {k: v for k, v in meta.items() if k != "format_version"}
    try:
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
    module.load_state_dict(state)
