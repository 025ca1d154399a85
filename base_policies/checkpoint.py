"""Loading policy folders: ``config.json`` (type, format version, hyper-parameters) plus
``model.safetensors``. No pickles: loading never runs code stored in the checkpoint.

Every way a folder can be wrong ends in one :class:`CheckpointError` naming the file and
what to do about it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dpft.base_policies.infra.errors import CheckpointError
from dpft.base_policies.infra.files import read_text
from dpft.base_policies.infra.state_io import readable_copy
from dpft.base_policies.policy import FORMAT_VERSION, Policy, policy_type, policy_type_names
from dpft.base_policies.weights import load_weights, policy_config_from_meta  # noqa: F401  (re-exported)

SHIPPED_DIR = Path(__file__).parent / "shipped"
DEFAULT_BASE = "shipped:metaworld-peg-insert-side-v3-mh"
"""What every command runs on when given no policy: the mixed-data peg-insert-side base (demos
from three simulated demonstrators, 0.55 success), the kind of imperfect base fine-tuning is for.
Its zero noise fails (0.00), so what DSRL gains there is steering, not the base's own mode (the
mixed-data push base's zero noise already scores 1.00)."""


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
    path = readable_copy(Path(path))  # a kill while it was being replaced may have left it moved aside
    if not path.exists():
        raise CheckpointError(f"policy folder {path} does not exist")
    inner = readable_copy(path / "policy")
    if not (path / "config.json").exists() and (inner / "config.json").exists():
        return inner  # a run folder
    return path


def read_meta(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.exists():
        raise CheckpointError(f"{path} is not a policy folder: config.json is missing")
    try:
        meta = json.loads(read_text(cfg, "policy config"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg} is not valid JSON ({e}); re-export the policy") from None
    if not isinstance(meta, dict) or "type" not in meta:
        raise CheckpointError(f"{cfg} has no 'type' field; is this a dpft policy folder?")
    if not isinstance(meta["type"], str) or not meta["type"]:
        raise CheckpointError(f"{cfg}: 'type' must name a policy type, got {meta['type']!r}; restore the file")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg} has format_version {version!r}; this dpft reads format {FORMAT_VERSION}. "
            "Upgrade dpft or re-export the policy."
        )
    return meta


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> Policy:
    """Load any policy folder (base, steered, residual), ``shipped:NAME`` or ``lerobot:PATH`` (a
    LeRobot diffusion policy folder, see :mod:`dpft.base_policies.lerobot`) in eval mode.
    ``policy.source`` records where it came from (``shipped:NAME`` or the folder), which lets a
    composed artifact refer to a shipped base instead of copying it."""
    if str(path).startswith("lerobot:"):
        from dpft.base_policies.lerobot.policy import load_lerobot

        policy = load_lerobot(str(path).split(":", 1)[1])
        policy.source = str(path)
        return policy.to(device)
    source = str(path) if str(path).startswith("shipped:") else None
    path = resolve_policy_dir(path)
    meta = read_meta(path)
    cls = policy_type(meta["type"])
    if cls is None:
        raise CheckpointError(
            f"{path / 'config.json'} has unknown policy type {meta['type']!r}; known: {policy_type_names()} "
            "(a type from another package needs that package installed)"
        )
    policy = cls.from_folder(path, meta)
    policy.source = source or str(path)
    return policy.to(device)
