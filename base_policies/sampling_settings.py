"""``dpft set-sampling``: a copy of a base policy that samples differently, with no re-training.

Two settings of a trained diffusion or flow policy are choices made at sampling time, not
training time, and users of chunked policies tune them (LeRobot's ``n_action_steps``, Diffusion
Policy's execution horizon):

* ``--action-horizon N``: how many of the ``pred_horizon`` predicted actions run before the
  policy is asked again. Every value in 1..pred_horizon is a chunk the policy was trained to
  predict; shorter is more closed-loop, longer commits to more of the plan.
* ``--denoising-steps K``: how many sampler steps share the training noise levels (DDIM for a
  diffusion policy, Euler/midpoint for a flow policy); fewer is faster, each K gives another
  map from the initial noise to the chunk.

The copy is the same folder with those fields of ``config.json`` changed (the weights are the
same bytes) and its provenance saying what it came from; use it anywhere a policy folder goes
(``dpft eval --policy OUT``, ``dpft finetune dsrl --base OUT``). Measure it before fine-tuning
on it: the change moves the base too (``experiments/results/dsrl_mh_probe.md``, section 3b:
executing all 8 actions made the drawer-open-mh base's zero noise solve the task).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from dpft.base_policies.checkpoint import DEFAULT_BASE, load_policy, read_meta, resolve_policy_dir
from dpft.base_policies.config import validate_arch
from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.paths import check_output_folder
from dpft.base_policies.infra.state_io import atomic_dir


@dataclass
class SetSamplingConfig:
    """Copy a base policy with another executed chunk length or number of denoising steps (no re-training)."""

    RANGES: ClassVar[dict[str, str]] = {"action_horizon": ">= 1", "denoising_steps": ">= 1"}
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

    out: Path
    """Folder to write the copy to."""
    policy: str = DEFAULT_BASE
    """Base policy folder, run folder or shipped:NAME."""
    action_horizon: int | None = None
    """Actions executed per chunk (1..pred_horizon; unchanged when not given)."""
    denoising_steps: int | None = None
    """Sampler steps per chunk (1..num_train_steps; unchanged when not given)."""
    overwrite: bool = False
    """Replace OUT if it exists."""


def set_sampling(cfg: SetSamplingConfig) -> Path:
    """``dpft set-sampling``: see the module docstring."""
    if cfg.action_horizon is None and cfg.denoising_steps is None:
        raise ConfigError("nothing to change: give --action-horizon N and/or --denoising-steps K")
    out = Path(cfg.out)
    check_output_folder(out, cfg.overwrite)
    policy = load_policy(cfg.policy)
    if policy.type_name not in ("diffusion", "flow"):
        raise ConfigError(
            f"{cfg.policy} is a {policy.type_name!r} policy; set-sampling changes dpft diffusion and flow bases "
            "(a fine-tuned artifact: fine-tune again on a changed base; a LeRobot policy: edit n_action_steps "
            "or num_inference_steps in its config.json)"
        )
    source = resolve_policy_dir(cfg.policy)
    meta = read_meta(source)
    changes = {"action_horizon": cfg.action_horizon, "num_inference_steps": cfg.denoising_steps}
    changes = {k: v for k, v in changes.items() if v is not None}
    arch = policy.config.arch
    flags = {"action_horizon": "--action-horizon", "num_inference_steps": "--denoising-steps"}
    try:
        validate_arch(dataclasses.replace(arch, **changes), policy.config.backbone)
    except ConfigError as e:
        raise ConfigError(f"{' / '.join(flags[k] for k in changes)}: {e}") from None
    before = {k: getattr(arch, k) for k in changes}
    meta["arch"] = {**meta["arch"], **changes}
    meta["provenance"] = {**(meta.get("provenance") or {}), "sampling_changed": {"from": cfg.policy, "before": before}}
    with atomic_dir(out) as tmp:
        for file in source.iterdir():
            if file.is_file() and file.name != "config.json":
                shutil.copyfile(file, tmp / file.name)
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    load_policy(out)  # the copy loads
    what = ", ".join(f"{k} {before[k]} -> {v}" for k, v in changes.items())
    print(f"wrote {out}: {cfg.policy} with {what}; measure it with dpft eval --policy {out} before fine-tuning on it")
    return out
