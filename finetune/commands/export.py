"""``dpft export lerobot``: write a policy built on a LeRobot diffusion policy back as a LeRobot folder.

- A LeRobot policy whose own weights changed (``dpft finetune dpo --base lerobot:PATH``) is
  written as the LeRobot folder it came from with the fine-tuned U-Net weights: LeRobot loads it
  with ``DiffusionPolicy.from_pretrained(OUT)`` (0.4: and its processors with
  ``PolicyProcessorPipeline.from_pretrained``) and produces dpft's chunks. Config and normaliser
  files are the original bytes.
- A steered (DSRL) or residual artifact on a LeRobot base has a learned part LeRobot has no
  format for. ``OUT`` is then the base, unchanged, as LeRobot loads it, and ``OUT/dpft/`` the
  whole dpft artifact (``dpft eval --policy OUT/dpft``); the command says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dpft.base_policies import load_policy
from dpft.base_policies.composed import ComposedPolicy
from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.paths import check_output_folder
from dpft.base_policies.lerobot.policy import LeRobotDiffusionPolicy
from dpft.base_policies.policy import Policy

LEARNED_FOLDER = "dpft"


@dataclass
class ExportLeRobotConfig:
    """Write a LeRobot-based dpft policy as a LeRobot pretrained_model folder."""

    policy: str
    """Policy folder or run folder (a fine-tuned LeRobot policy or an artifact on a LeRobot base), or lerobot:PATH."""
    out: Path
    """Folder to write (LeRobot's pretrained_model layout)."""
    overwrite: bool = False
    """Replace OUT if it exists."""


def lerobot_root(policy: Policy) -> tuple[LeRobotDiffusionPolicy | None, list[str]]:
    """The LeRobot policy at the bottom of a chain of composed artifacts, and the chain's types."""
    chain = []
    while isinstance(policy, ComposedPolicy):
        chain.append(policy.type_name)
        policy = policy.base
    return (policy if isinstance(policy, LeRobotDiffusionPolicy) else None), chain


def export_lerobot(cfg: ExportLeRobotConfig) -> Path:
    """``dpft export lerobot``: see the module docstring."""
    out = Path(cfg.out)
    check_output_folder(out, cfg.overwrite)
    policy = load_policy(cfg.policy)
    root, chain = lerobot_root(policy)
    if root is None:
        raise ConfigError(
            f"{cfg.policy} is a dpft {policy.type_name!r} policy with no LeRobot policy underneath; "
            "export lerobot writes policies loaded with --base lerobot:PATH (and what was fine-tuned from them)"
        )
    root.export(out)
    if not chain:
        tuned = (root.config.provenance or {}).get("method")
        what = f"fine-tuned weights ({tuned})" if tuned else "weights"
        kind = f"{root.lerobot.config['type']} policy ({root.lerobot.layout} layout)"
        print(f"wrote {out}: a LeRobot {kind} with the {what} of {cfg.policy}")
        return out
    policy.save(out / LEARNED_FOLDER)
    tuned = (root.config.provenance or {}).get("method")
    state = f"as fine-tuned by {tuned}" if tuned else "unchanged"
    print(
        f"wrote {out}: the LeRobot base of {cfg.policy}, {state}, as LeRobot loads it; its learned part "
        f"({' on '.join(chain)}) has no LeRobot form and is in {out / LEARNED_FOLDER} with the base "
        f"(run it with: dpft eval --policy {out / LEARNED_FOLDER})"
    )
    return out
