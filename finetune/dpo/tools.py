"""``dpft prefs stats`` and ``dpft prefs merge``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.paths import check_output_file
from dpft.finetune.dpo.pairs_collect import format_stats
from dpft.finetune.dpo.prefs import Prefs, agreement, merge, read_labels, read_prefs, write_prefs


@dataclass
class PrefsStatsConfig:
    """Print what a preference file holds: pairs, labels, sources, rollouts, env steps."""

    files: tuple[Path, ...] = field(default_factory=tuple)
    """Preference files (.hdf5, with their .jsonl index beside them)."""
    json: bool = False
    """One JSON object per file."""
    agreement: tuple[Path, ...] = field(default_factory=tuple)
    """Two labels files (<stem>.labels.jsonl) of the same pairs by two labellers: how often they agree."""


def prefs_stats(cfg: PrefsStatsConfig) -> list[dict]:
    if not cfg.files and not cfg.agreement:
        raise ConfigError("name at least one preference file: dpft prefs stats --files prefs.hdf5")
    if cfg.agreement and len(cfg.agreement) != 2:
        raise ConfigError(f"--agreement takes two labels files, got {len(cfg.agreement)}")
    out = []
    if cfg.agreement:
        a, b = cfg.agreement
        s = agreement(read_labels(a), read_labels(b))
        out.append(s)
        share = "–" if s["agreement"] is None else f"{s['agreement']:.0%}"
        print(
            json.dumps({"agreement_of": [str(a), str(b)], **s})
            if cfg.json
            else f"{a} and {b}: {s['both_answered']} pairs answered in both, the same answer on "
            f"{s['same_answer']} ({share})"
        )
    for path in cfg.files:
        s = read_prefs(path).stats()
        out.append(s)
        print(json.dumps({"file": str(path), **s}) if cfg.json else format_stats(path, s))
    return out


@dataclass
class PrefsMergeConfig:
    """Merge preference files (same task and shapes) into one; ids get a per-file prefix."""

    files: tuple[Path, ...] = field(default_factory=tuple)
    """Preference files to merge (a person's labels beside each are applied first)."""
    out: Path = Path("merged.hdf5")
    """Output file."""
    overwrite: bool = False
    """Replace --out if it exists."""


def prefs_merge(cfg: PrefsMergeConfig) -> Prefs:
    if len(cfg.files) < 2:
        raise ConfigError("name at least two files: dpft prefs merge --files a.hdf5 b.hdf5 --out merged.hdf5")
    check_output_file(cfg.out, cfg.overwrite, "--out", (".hdf5", ".h5"))
    merged = merge([(Path(p), read_prefs(p)) for p in cfg.files])
    write_prefs(cfg.out, merged)
    print(format_stats(cfg.out, merged.stats()))
    return merged
