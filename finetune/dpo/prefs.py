"""Preference data: one HDF5 file of rollouts and a JSONL index of pairs beside it.

``prefs.hdf5`` holds the arrays, ``prefs.jsonl`` (same stem) one line per pair, and a person's
answers go to ``prefs.labels.jsonl``; the three travel together. Field names follow TRL's
preference data where they fit (``chosen`` / ``rejected``; the conditioning observations play
the part of TRL's ``prompt``)::

    prefs.hdf5
      attrs: format="dpft-prefs", format_version=1, task, obs_dim, action_dim,
             obs_horizon, pred_horizon, action_horizon, denoising_steps, sampler, policy
      rollouts/<rid>/obs      [T, obs_horizon, obs_dim]  observation history at each decision
      rollouts/<rid>/chunks   [T, pred_horizon, action_dim]  the chunk the policy produced (env units)
      rollouts/<rid>/chains   [T, K+1, pred_horizon, action_dim]  normalised sampler chain (stochastic
                              sampler only; what D3PO needs)
      rollouts/<rid>/actions  [N, action_dim]  every executed action, from the reset (replay, videos)
      rollouts/<rid> attrs:   return, success, length, reset_seed, group, start_decision, round

    prefs.jsonl, one object per line:
      {"id": "p00012", "kind": "trajectory" | "chunk", "chosen": "r00034", "rejected": "r00035",
       "label": "chosen" | "rejected" | "tie" | null, "margin": 1.0,
       "source": "success" | "reward" | "person" | null, "reset_seed": 17, "policy": "shipped:...",
       "round": 0}

A ``trajectory`` pair compares whole rollouts from the same start state; every decision of
each member is training data. A ``chunk`` pair compares two rollouts that share their first
``start_decision`` decisions (a saved mid-episode state) and differ from there: only the chunk
at ``start_decision`` is training data; what follows it is the base finishing the episode, there
to score the chunk. ``label`` says which member is preferred (``rejected`` means the member stored
as rejected won: a person overruled the ranking), ``tie`` pairs are kept but not trained on, and
``null`` means unlabelled.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dpft.base_policies.infra.errors import ConfigError, DpftError
from dpft.base_policies.infra.files import HDF5_ERRORS, interpreting, read_text
from dpft.base_policies.infra.records import from_dict
from dpft.base_policies.infra.state_io import reach

FORMAT = "dpft-prefs"
FORMAT_VERSION = 1
LABELS = ("chosen", "rejected", "tie", "unclear")
KINDS = ("trajectory", "chunk")
META_KEYS = ("task", "obs_dim", "action_dim", "obs_horizon", "pred_horizon", "action_horizon")


class PrefsError(DpftError):
    """A preference file or labels file that cannot be used as it is."""


@dataclass
class Rollout:
    obs: np.ndarray
    chunks: np.ndarray
    actions: np.ndarray
    episode_return: float
    success: bool
    length: int
    reset_seed: int
    group: int
    start_decision: int = 0
    round: int = 0
    chains: np.ndarray | None = None


@dataclass
class Pair:
    id: str
    kind: str
    chosen: str
    rejected: str
    label: str | None
    margin: float
    source: str | None
    reset_seed: int
    policy: str
    round: int = 0

    def preferred(self) -> tuple[str, str] | None:
        """(winner, loser) rollout ids, or None for a tie or an unlabelled pair."""
        if self.label == "chosen":
            return self.chosen, self.rejected
        if self.label == "rejected":
            return self.rejected, self.chosen
        return None


@dataclass
class Prefs:
    meta: dict[str, Any]
    rollouts: dict[str, Rollout]
    pairs: list[Pair] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        labels = Counter(p.label or "unlabelled" for p in self.pairs)
        succ = [r.success for r in self.rollouts.values() if r.start_decision == 0]
        return {
            "task": self.meta.get("task"),
            "pairs": len(self.pairs),
            "kinds": dict(Counter(p.kind for p in self.pairs)),
            "labels": dict(labels),
            "sources": dict(Counter(p.source or "none" for p in self.pairs)),
            "rollouts": len(self.rollouts),
            "env_steps": int(sum(r.length for r in self.rollouts.values())),
            "start_states": len({(r.round, r.group) for r in self.rollouts.values()}),
            "rollout_success": float(np.mean(succ)) if succ else None,
            "mean_margin": float(np.mean([p.margin for p in self.pairs])) if self.pairs else None,
            "rounds": sorted({p.round for p in self.pairs}),
            "sampler": self.meta.get("sampler"),
            "policy": self.meta.get("policy"),
            "collection": self.meta.get("collection") or "not recorded",
        }


def index_path(path: Path) -> Path:
    return Path(path).with_suffix(".jsonl")


def labels_path(path: Path) -> Path:
    return Path(path).with_suffix(".labels.jsonl")


def write_prefs(path: Path, prefs: Prefs) -> None:
    """Write the HDF5 file and its JSONL index, each to a temporary name first and then renamed,
    so an interrupted write never leaves a half file under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_h5, tmp_idx = path.with_name(f".{path.name}.tmp"), path.with_name(f".{index_path(path).name}.tmp")
    tmp_idx.unlink(missing_ok=True)  # what a killed write of this file left (the HDF5 one is truncated below)
    reach("file-tmp-created")
    with h5py.File(tmp_h5, "w") as f:  # closed (and flushed) before the fsync below
        f.attrs["format"], f.attrs["format_version"] = FORMAT, FORMAT_VERSION
        for k, v in prefs.meta.items():
            f.attrs[k] = "" if v is None else v
        g = f.create_group("rollouts")
        for rid, r in prefs.rollouts.items():
            rg = g.create_group(rid)
            rg.create_dataset("obs", data=r.obs.astype(np.float32), compression="gzip")
            rg.create_dataset("chunks", data=r.chunks.astype(np.float32), compression="gzip")
            rg.create_dataset("actions", data=r.actions.astype(np.float32), compression="gzip")
            if r.chains is not None:
                rg.create_dataset("chains", data=r.chains.astype(np.float32), compression="gzip")
            rg.attrs.update(
                {
                    "return": r.episode_return,
                    "success": r.success,
                    "length": r.length,
                    "reset_seed": r.reset_seed,
                    "group": r.group,
                    "start_decision": r.start_decision,
                    "round": r.round,
                }
            )
    with open(tmp_idx, "w") as f:
        for p in prefs.pairs:
            f.write(json.dumps(asdict(p)) + "\n")
        f.flush()
        os.fsync(f.fileno())
    with open(tmp_h5, "rb") as f:
        os.fsync(f.fileno())
    reach("file-durable")
    # the index first: the HDF5 file's presence is what marks a complete pair of files
    os.replace(tmp_idx, index_path(path))
    os.replace(tmp_h5, path)
    reach("file-published")


def read_prefs(path: Path, labels: bool = True) -> Prefs:
    """Read a preference file (and, with ``labels``, apply a person's answers from
    ``<stem>.labels.jsonl`` when it exists: the last answer for a pair wins)."""
    path = Path(path)
    if not path.exists():
        raise PrefsError(f"preference file {path} does not exist")
    if not index_path(path).exists():
        raise PrefsError(
            f"{path} has no pair index {index_path(path).name} beside it; both files come from `dpft prefs collect`"
        )
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PrefsError(f"{path} is not a readable HDF5 file ({e})") from None
    with f, interpreting(path, "preference file", PrefsError, DAMAGED, HDF5_ERRORS):
        if f.attrs.get("format") != FORMAT:
            raise PrefsError(f"{path} is not a dpft preference file (no format={FORMAT!r} attribute)")
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise PrefsError(f"{path} has preference format version {version}; this dpft reads {FORMAT_VERSION}")
        meta = {k: _plain(v) for k, v in f.attrs.items() if k not in ("format", "format_version")}
        missing = [k for k in META_KEYS if k not in meta]
        if missing:
            raise PrefsError(f"{path} lacks the attribute(s) {missing}")
        if "rollouts" not in f:
            raise PrefsError(f"{path} has no 'rollouts' group")
        rollouts = {rid: _read_rollout(path, rid, g) for rid, g in f["rollouts"].items()}
    pairs = _read_index(index_path(path), rollouts)
    prefs = Prefs(meta, rollouts, pairs)
    if labels and labels_path(path).exists():
        apply_labels(prefs, read_labels(labels_path(path)), labels_path(path))
    return prefs


DAMAGED = "the file is damaged; collect the pairs again (dpft prefs collect) or restore a copy"


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _read_rollout(path: Path, rid: str, g: h5py.Group) -> Rollout:
    try:
        r = Rollout(
            obs=g["obs"][()],
            chunks=g["chunks"][()],
            actions=g["actions"][()],
            episode_return=float(g.attrs["return"]),
            success=bool(g.attrs["success"]),
            length=int(g.attrs["length"]),
            reset_seed=int(g.attrs["reset_seed"]),
            group=int(g.attrs["group"]),
            start_decision=int(g.attrs.get("start_decision", 0)),
            round=int(g.attrs.get("round", 0)),
            chains=g["chains"][()] if "chains" in g else None,
        )
    except KeyError as e:
        raise PrefsError(f"{path}: rollout {rid} lacks {e}") from None
    for name in ("obs", "chunks", "chains"):
        a = getattr(r, name)
        if a is not None and not np.isfinite(a).all():
            raise PrefsError(f"{path}: rollout {rid} has a NaN or infinite value in {name!r}")
    if len(r.obs) != len(r.chunks) or len(r.obs) == 0:
        raise PrefsError(f"{path}: rollout {rid} has {len(r.obs)} observations and {len(r.chunks)} chunks")
    return r


def _read_index(path: Path, rollouts: dict[str, Rollout]) -> list[Pair]:
    pairs = []
    for n, line in enumerate(read_text(path, "pair index").splitlines(), 1):
        if not line.strip():
            continue
        try:
            pair = from_dict(Pair, json.loads(line))  # every field of its declared type
            if pair.id is None or pair.chosen is None or pair.rejected is None:
                raise ConfigError("a pair needs an id and two rollout ids")
        except (json.JSONDecodeError, ConfigError, TypeError) as e:
            raise PrefsError(f"{path} line {n} is not a pair record ({e})") from None
        if pair.kind not in KINDS or pair.label not in (*LABELS, None):
            raise PrefsError(f"{path} line {n}: kind must be one of {KINDS} and label one of {LABELS} or null")
        for rid in (pair.chosen, pair.rejected):
            if rid not in rollouts:
                raise PrefsError(f"{path} line {n}: pair {pair.id} names rollout {rid!r}, which the HDF5 file lacks")
        pairs.append(pair)
    return pairs


# ----- a person's labels --------------------------------------------------------------
ANSWERS = {"left": "chosen", "right": "rejected", "tie": "tie", "cant_tell": "unclear", "skip": None}
"""Answers are in the stored order: ``left`` means the pair's stored ``chosen`` member won,
``right`` that the ``rejected`` one did (the labelling page swaps the sides it shows for half the
pairs and translates the click back). ``cant_tell`` removes the pair from training for good (a
``skip`` asks again later); like a tie it names no winner."""


def read_labels(path: Path) -> dict[str, str]:
    """``{pair id: answer}`` from a labels JSONL (``{"pair": ID, "answer": "left"|"right"|"tie"|"skip"}``
    per line; the last line for a pair wins; a torn last line, from a closed tab, is ignored)."""
    answers: dict[str, str] = {}
    lines = read_text(path, "labels file").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            pair, answer = d["pair"], d["answer"]
            if not isinstance(pair, str) or not isinstance(answer, str):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            if line.startswith("{") and not line.rstrip().endswith("}"):  # torn by a crash mid-write
                continue
            raise PrefsError(f"{path} line {n} is not a label record ({line[:80]!r})") from None
        if answer not in ANSWERS:
            raise PrefsError(f"{path} line {n}: answer {answer!r} is not one of {sorted(ANSWERS)}")
        answers[pair] = answer
    return answers


def agreement(a: dict[str, str], b: dict[str, str]) -> dict[str, Any]:
    """How two labellers' answers (``read_labels`` of two files for the same pairs) agree: the
    pairs both answered with a verdict (not skip), and the share given the same one."""
    both = [p for p in a if p in b and a[p] != "skip" and b[p] != "skip"]
    same = sum(a[p] == b[p] for p in both)
    return {"both_answered": len(both), "same_answer": same, "agreement": same / len(both) if both else None}


def apply_labels(prefs: Prefs, answers: dict[str, str], where: Path | str = "labels") -> int:
    """Overwrite the labels of the answered pairs (source ``person``); returns how many."""
    by_id = {p.id: p for p in prefs.pairs}
    unknown = sorted(set(answers) - set(by_id))
    if unknown:
        raise PrefsError(
            f"{where} names {len(unknown)} pair(s) the preference file lacks (first: {unknown[0]!r}); "
            "was it written for another preference file?"
        )
    n = 0
    for pid, answer in answers.items():
        if answer == "skip":
            continue
        by_id[pid].label, by_id[pid].source = ANSWERS[answer], "person"
        n += 1
    return n


def append_label(path: Path, pair: str, answer: str, meta: dict[str, Any] | None = None) -> None:
    """Append one answer (with ``meta``: when, by whom, seconds spent, replays, a reason) and
    flush it to disk at once (closing the page loses nothing)."""
    if answer not in ANSWERS:
        raise PrefsError(f"answer {answer!r} is not one of {sorted(ANSWERS)}")
    torn = Path(path).exists() and Path(path).stat().st_size > 0 and not Path(path).read_bytes().endswith(b"\n")
    record = {"pair": pair, "answer": answer, **(meta or {})}
    with open(path, "a") as f:
        f.write(("\n" if torn else "") + json.dumps(record) + "\n")  # a torn line stays alone
        f.flush()
        os.fsync(f.fileno())


# ----- several files ------------------------------------------------------------------
def check_compatible(prefs: list[tuple[Path, Prefs]], policy: Any | None = None) -> None:
    """Every file is for the same task sizes (and fits ``policy``, when given)."""
    first_path, first = prefs[0]
    for path, p in prefs[1:]:
        diff = [k for k in META_KEYS if p.meta.get(k) != first.meta.get(k)]
        if diff:
            raise PrefsError(
                f"{path} and {first_path} differ in "
                + ", ".join(f"{k} ({p.meta.get(k)} vs {first.meta.get(k)})" for k in diff)
            )
    if policy is not None:
        want = {
            "obs_dim": policy.obs_dim,
            "action_dim": policy.action_dim,
            "obs_horizon": policy.obs_horizon,
            "pred_horizon": policy.pred_horizon,
        }
        diff = [k for k, v in want.items() if int(first.meta[k]) != v]
        if diff:
            raise PrefsError(
                f"{first_path} was collected for {', '.join(f'{k}={first.meta[k]}' for k in diff)} but the policy has "
                f"{', '.join(f'{k}={want[k]}' for k in diff)}: preference data from another task or policy shape"
            )


def merge(prefs: list[tuple[Path, Prefs]]) -> Prefs:
    """One :class:`Prefs` from several files: rollout and pair ids get a per-file prefix, and start-state
    group ids an offset past the previous files' (group 0 of two files is two start states, not one)."""
    check_compatible(prefs)
    meta = dict(prefs[0][1].meta)
    if len(prefs) > 1:
        meta["policy"] = ";".join(sorted({str(p.meta.get("policy", "")) for _, p in prefs}))
        samplers = {p.meta.get("sampler") for _, p in prefs}
        meta["sampler"] = samplers.pop() if len(samplers) == 1 else "mixed"
        meta["collection"] = "; ".join(dict.fromkeys(str(p.meta.get("collection", "")) for _, p in prefs))
    rollouts: dict[str, Rollout] = {}
    pairs: list[Pair] = []
    offset = 0
    for i, (_, p) in enumerate(prefs):
        tag = f"f{i}_" if len(prefs) > 1 else ""
        rollouts.update({tag + rid: replace(r, group=r.group + offset) for rid, r in p.rollouts.items()})
        offset += max((r.group for r in p.rollouts.values()), default=-1) + 1
        for pair in p.pairs:
            pairs.append(
                Pair(
                    **{
                        **asdict(pair),
                        "id": tag + pair.id,
                        "chosen": tag + pair.chosen,
                        "rejected": tag + pair.rejected,
                    }
                )
            )
    return Prefs(meta, rollouts, pairs)
