"""Defaults that are the benchmarks' recipe, chosen from the kind of task.

A bare ``dpft finetune dsrl --base B --task T`` must do what the benchmarks validated, also on a
task nobody tuned for. Two settings cannot be one number for every task, so they come from a
preset picked by whether the task reports success:

* ``success`` (Meta-World, gymnasium-robotics, a user's env that sets ``info["success"]``): the
  sparse success reward that ends the episode at success, 30 evaluation episodes. With the task's
  dense shaped reward DSRL walked away from the base on tasks in no benchmark, where the sparse
  recipe of the benchmark rows improved it (docs/concepts/defaults.md; experiments/results/defaults.md
  for the bare runs). DSRL's critics there have LayerNorm and take two gradient steps per
  transition: with plain critics and one step the learning policy fell below the base in up to 6
  of 15 evaluations after 25k env steps on a task in no benchmark (the ``dsrl`` against the
  ``dsrl-ln-utd2`` rows of defaults.md);
* ``return`` (locomotion, no success flag): the task's own reward, 10 evaluation episodes of up
  to 1000 steps each; DSRL's critics plain, one step per transition (no dips to remove there).

The residual (``dpft finetune residual``) takes its largest correction from the preset on
locomotion: the full action range (``residual_scale`` 1). Where the task reports success the scale
is measured on the base (its action spread across initial noises, finetune/common/action_spread.py),
which took the five mixed-data Meta-World bases to >= 0.90; on the three medium locomotion bases that
measured scale (0.3-0.4) held the residual below DSRL-NA, and the full range took it above on each
(the ``td3-scale1`` rows of experiments/results/residual_bench.md).

Preference updates (``dpft finetune dpo``) take their recipe from the preset. Where the task
reports success: one round of filtered BC on the best of two rollouts per start state, one of them
the base's zero-noise mode (128 start states, 120 chunk states branched twice): the mixed-data
benchmark's ``filtered-bc-mode-best-1round`` row, which took push-mh and pick-place-mh to 0.92 and 0.98
(three seeds each; a base whose mode fails, peg-insert-side-mh, fell to 0.55, where the guard keeps
the base), and on the three Meta-World tasks in no benchmark gained on two and held the third over
three seeds (experiments/results/dpo_bench.md, defaults.md). Otherwise five rounds of Diffusion-DPO on rollout
pairs (16 start states x 4 streams) against the base, which gained on both locomotion bases over
three seeds (dpo_pilots/mh.md); more rounds let Meta-World policies fall.

Both deploy with ``--final guarded``: OUT/policy is the base until a fine-tuned policy beats it
with 95% confidence on validation episodes of its own, so a dip in learning is never what a user
is handed. A setting the user gives (flag or config file) always wins; a preset fills only what
was left unset (``None``), and the run prints and records what it chose.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
from typing import Any

from dpft.envs.tasks import task_defines_success


@dataclass(frozen=True)
class Preset:
    name: str
    settings: dict[str, Any]


SUCCESS = {"reward": "sparse_success(terminate=True)", "eval_episodes": 30, "final": "guarded"}
RETURN = {"reward": "dense", "eval_episodes": 10, "final": "guarded"}
GENERIC = {"success": Preset("success", SUCCESS), "return": Preset("return", RETURN)}
"""The residual's presets, and those of methods without their own (SAC from scratch, DPPO, FIND)."""
DSRL_SUCCESS = {**SUCCESS, "layer_norm": True, "utd": 2.0}
DSRL_RETURN = {**RETURN, "layer_norm": False, "utd": 1.0}
DPO_SUCCESS = {
    "rounds": 1,
    "loss": "filtered-bc",
    "states": 128,
    "streams": 2,
    "chunk_states": 120,
    "chunk_streams": 2,
    "noise_scales": [0.0, 1.0],
    "pairing": "best",
}
DPO_RETURN = {
    "rounds": 5,
    "loss": "diffusion-dpo",
    "states": 16,
    "streams": 4,
    "chunk_states": 0,
    "chunk_streams": 2,
    "noise_scales": [1.0],
    "pairing": "all",
}
PRESETS: dict[str, dict[str, Preset]] = {
    "dsrl": {"success": Preset("success", DSRL_SUCCESS), "return": Preset("return", DSRL_RETURN)},
    # on a task that reports success the residual's scale is measured on the base (action_spread.py)
    "residual": {"success": GENERIC["success"], "return": Preset("return", {**RETURN, "residual_scale": 1.0})},
    "dpo": {"success": Preset("success", DPO_SUCCESS), "return": Preset("return", DPO_RETURN)},
}
NO_BASE = {"final": "last"}
"""Training from scratch has no base to guard against."""


def preset_for(method: str, task: str) -> Preset:
    """The preset of ``method`` for ``task`` (methods without presets get the generic ones)."""
    kind = "success" if task_defines_success(task) else "return"
    return PRESETS.get(method, GENERIC)[kind]


def apply_preset(cfg: Any, method: str, uses_base: bool = True) -> tuple[Any, str | None]:
    """``cfg`` with every unset (None) preset setting filled in, and the line that says so (None
    when the user set them all). The preset's name is recorded in ``cfg.preset``."""
    preset = preset_for(method, cfg.task)
    settings = {**preset.settings, **({} if uses_base else NO_BASE)}
    known = {f.name for f in fields(cfg)}
    filled = {k: copy.copy(v) for k, v in settings.items() if k in known and getattr(cfg, k) is None}
    cfg = with_settings(cfg, preset=preset.name, **filled)
    if not filled:
        return cfg, None
    chosen = ", ".join(_setting(k, v) for k, v in filled.items())
    flags = ", ".join(f"--{k.replace('_', '-')}" for k in filled)
    return cfg, f"settings: {chosen} (preset '{preset.name}' for {cfg.task}); override with {flags}"


def _setting(name: str, value: Any) -> str:
    """How the settings line shows one setting: as its flag would set it (``layer-norm``,
    ``no-layer-norm``, ``utd 2``)."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"no-{flag}"
    if isinstance(value, list):
        return f"{flag} {' '.join(f'{x:g}' for x in value)}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{flag} {value}"


def with_settings(cfg: Any, **settings: Any) -> Any:
    """``dataclasses.replace(cfg, **settings)`` that keeps which settings the user gave
    (``cfg.explicit``, which is not a field and which replace() would drop)."""
    explicit = getattr(cfg, "explicit", set())
    cfg = replace(cfg, **settings)
    cfg.explicit = explicit
    return cfg
