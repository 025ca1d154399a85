"""The artifact convention for "a learned part on top of a frozen base policy".

DSRL's steered policy and a residual policy are both a base plus a small learned module. One
folder layout serves all of them (``type`` names the subclass)::

    config.json        type, format_version, the subclass's own fields, and
                       base:       {"shipped": NAME, "sha256": HASH}  -- a shipped base, by reference
                                or {"folder": "base"}                 -- a copy, inside this folder
                       provenance: {dpft version, creation time, what made it}  (informational)
    model.safetensors  the learned part's weights
    base/              the copy of the base (only when it is not a shipped base)

A shipped base is named rather than copied, so an artifact is a few hundred kB and benchmark
results can keep theirs beside the tables; the hash of the shipped folder is checked on load,
so a later dpft whose shipped policy changed refuses the artifact instead of silently
evaluating it on another base. A loader ignores provenance and any key it does not know.
"""

from __future__ import annotations

import abc
import datetime
import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from dpft.base_policies.infra.errors import CheckpointError
from dpft.base_policies.infra.state_io import atomic_dir
from dpft.base_policies.policy import FORMAT_VERSION, Policy
from dpft.base_policies.weights import load_weights

BASE_FOLDER = "base"


def folder_hash(path: Path) -> str:
    """sha256 over the names and bytes of a policy folder's files (sorted; hidden files skipped)."""
    h = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(file.relative_to(path)).encode() + b"\0")
        h.update(file.read_bytes())
    return h.hexdigest()


def provenance(**extra: Any) -> dict[str, Any]:
    try:
        dpft_version = version("dpft")
    except PackageNotFoundError:
        dpft_version = "unknown"
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"dpft_version": dpft_version, "created": now, **extra}


class ComposedPolicy(Policy):
    """A frozen ``base`` plus a ``learned`` module; horizons and bounds are the base's.

    Subclasses implement :meth:`predict_chunk`, :meth:`fields` (what config.json must hold to
    rebuild the learned module) and :meth:`build_learned` (the learned module from those fields)."""

    def __init__(self, base: Policy, learned: nn.Module, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.base = base.eval().requires_grad_(False)
        self.learned = learned.eval()
        self.meta = dict(meta or {})
        for name in ("obs_dim", "action_dim", "obs_horizon", "pred_horizon", "action_horizon"):
            setattr(self, name, getattr(base, name))
        self.config = getattr(base, "config", None)

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """The base's noise (a LeRobot base's covers more steps than its executed chunk)."""
        return tuple(self.base.noise_shape)

    @abc.abstractmethod
    def fields(self) -> dict[str, Any]:
        """The subclass's settings written to config.json (enough to rebuild ``learned``)."""

    @classmethod
    @abc.abstractmethod
    def build_learned(cls, base: Policy, meta: dict[str, Any]) -> nn.Module:
        """An untrained learned module of the shape ``meta`` describes."""

    # ----- folder ---------------------------------------------------------------------
    def save(self, path: Path) -> None:
        source = getattr(self.base, "source", "")
        meta = {
            **{k: v for k, v in self.meta.items() if k not in ("base", "provenance")},
            **self.fields(),
            "type": self.type_name,
            "format_version": FORMAT_VERSION,
            "provenance": {**self.meta.get("provenance", {}), **provenance()},
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.learned.state_dict().items()}
        with atomic_dir(Path(path)) as tmp:
            if source.startswith("shipped:"):
                from dpft.base_policies.checkpoint import resolve_policy_dir

                meta["base"] = {"shipped": source.split(":", 1)[1], "sha256": folder_hash(resolve_policy_dir(source))}
            else:
                meta["base"] = {"folder": BASE_FOLDER}
                self.base.save(tmp / BASE_FOLDER)
            (tmp / "config.json").write_text(json.dumps(meta, indent=2))
            save_file(state, str(tmp / "model.safetensors"))

    @classmethod
    def from_folder(cls, path: Path, meta: dict[str, Any]) -> ComposedPolicy:
        base = cls.load_base(path, meta)
        learned = cls.build_learned(base, meta)
        load_weights(learned, path)
        return cls(base, learned, meta)

    @staticmethod
    def load_base(path: Path, meta: dict[str, Any]) -> Policy:
        from dpft.base_policies.checkpoint import load_policy, resolve_policy_dir

        ref = meta.get("base") or {"folder": BASE_FOLDER}  # artifacts from before references: a copy
        if "shipped" in ref:
            name = f"shipped:{ref['shipped']}"
            found = folder_hash(resolve_policy_dir(name))
            if found != ref.get("sha256"):
                raise CheckpointError(
                    f"{path} was made on {name} with hash {str(ref.get('sha256'))[:12]}..., but the installed {name} "
                    f"has hash {found[:12]}...; install the dpft version that made it "
                    f"({meta.get('provenance', {}).get('dpft_version', 'unknown')}) or retrain"
                )
            return load_policy(name)
        folder = path / str(ref.get("folder", BASE_FOLDER))
        if not folder.exists():
            raise CheckpointError(f"{path} names its base as {folder.name}/, which is missing; re-export the policy")
        return load_policy(folder)
