"""The one run-folder layout every training command writes::

    OUT/
      config.yaml        resolved configuration (what --resume reads back)
      tb/                TensorBoard events (config also logged once as text)
      checkpoint/        latest training state, replaced atomically (everything --resume needs)
      policy/            the final policy folder (config.json + model.safetensors)

``load_policy(OUT)`` accepts the run folder itself and loads ``OUT/policy``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.files import read_text
from dpft.base_policies.infra.paths import check_writable_folder
from dpft.base_policies.infra.records import from_dict, to_dict
from dpft.base_policies.infra.state_io import atomic_write_text, clean_leftovers, readable_copy, recover_dir


@dataclass
class RunFolder:
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def tb_dir(self) -> Path:
        return self.root / "tb"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoint"

    @property
    def policy_dir(self) -> Path:
        return self.root / "policy"

    def has_checkpoint(self) -> bool:
        """A complete checkpoint is there (:func:`open_run` has put back a copy a kill moved aside)."""
        return (readable_copy(self.checkpoint_dir) / "state.json").exists()

    def lock(self) -> None:
        """Hold an exclusive lock on the folder for the rest of this process (released when it
        exits, even by a kill): two processes training into one folder would corrupt both runs."""
        import fcntl

        key = str(self.root.resolve())
        if key in _HELD_LOCKS:  # this process already trains here (a resume after an interruption)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / ".lock", "a+")  # noqa: SIM115 -- kept open: the lock lives as long as the process
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"{self.root} is in use by {holder}; wait for it to finish or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"dpft process {os.getpid()}")
        handle.flush()
        _HELD_LOCKS[key] = handle

    def holds_run(self) -> bool:
        """A checkpoint or a finished policy is there (a config alone is a run that never saved)."""
        return self.has_checkpoint() or (self.policy_dir / "config.json").exists()

    def clear(self) -> None:
        """Delete what a run wrote here (``--overwrite``), copies moved aside by a kill included;
        other files in the folder are left alone."""
        for name in ("checkpoint", "policy", "tb", "best_policy"):
            shutil.rmtree(self.root / name, ignore_errors=True)
            shutil.rmtree(self.root / f".{name}.old", ignore_errors=True)
            recover_dir(self.root / name)  # deletes the temporaries
        # per-process checkpoints of a multi-process run; a DPO run's rounds of pairs (a new run
        # must collect its own, not train on the old run's)
        for name in ("ranks", "prefs", "given"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for name in ("config.yaml", "evals.jsonl", "final_eval.json", "best_policy.json", "given_prefs.json"):
            (self.root / name).unlink(missing_ok=True)

    clear_before_writing: bool = False
    """``--overwrite`` of a folder that holds a run: deleted at the first write, once every input
    was validated, so a mistake in the new command loses nothing."""

    def write_config(self, cfg: Any) -> None:
        if self.clear_before_writing:
            self.clear()
            self.clear_before_writing = False
        atomic_write_text(self.config_path, yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def read_config(self, cls: type, missing: dict[str, Any] | None = None) -> Any:
        """The run's config. ``missing``: values for keys the file lacks because it was written
        before they existed -- the behaviour the run actually had, which need not be today's default."""
        if not self.config_path.exists():
            raise ConfigError(f"cannot resume: {self.config_path} does not exist (was {self.root} started by dpft?)")
        try:
            stored = yaml.safe_load(read_text(self.config_path, "run config")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"run config {self.config_path} is not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(stored, dict):
            raise ConfigError(f"run config {self.config_path} must hold a mapping of settings")
        return from_dict(cls, {**(missing or {}), **stored})

    def writer(self, cfg: Any):
        """TensorBoard writer with the full config logged once as text."""
        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(str(self.tb_dir))
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        w.add_text("config", "```\n" + text + "\n```")
        return w


_HELD_LOCKS: dict[str, Any] = {}  # run folder -> its open lock file, for this process's lifetime


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part, None)
    return cfg


# Settings a resumed run may take from the command line: they do not change what is learned.
RESUME_MAY_CHANGE = {"resume", "progress", "out", "device", "overwrite"}
RESUME_MAY_EXTEND = ("steps", "rounds")
"""Lengths a resumed run may be given larger than they were (more env/gradient steps, more DPO rounds)."""


def resumed_config(given: Any, stored: Any, path: Path, announce: bool = True) -> Any:
    """The run's own config, with what the command line may change on ``--resume``: the progress
    bar and device, and a larger ``--steps`` (logged). Any other setting the user gave that
    differs from the run's is refused, naming it; it would silently make another run."""
    explicit = getattr(given, "explicit", set())
    changed = sorted(k for k in explicit - RESUME_MAY_CHANGE if _get(given, k) != _get(stored, k))
    updates = {k: getattr(given, k) for k in explicit & RESUME_MAY_CHANGE - {"out", "resume", "progress"}}
    extended = [k for k in RESUME_MAY_EXTEND if k in changed and _get(given, k) > _get(stored, k)]
    for k in extended:
        updates[k] = _get(given, k)
        changed.remove(k)
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {_get(given, k)} (the run has {_get(stored, k)})" for k in changed)
        raise ConfigError(
            f"--resume continues the run as {path} configures it; these settings differ: {diffs}. Only a larger "
            "--steps (--rounds for dpo), --device and --progress may change; start a new run with another --out "
            "to change the others"
        )
    for k in extended if announce else ():
        print(
            f"resume: extending --{k} from {_get(stored, k)} to {_get(given, k)} (schedules that depend on the "
            "length, such as train-bc's learning-rate decay or a replay buffer sized to the run, keep or stretch "
            f"as they are computed from --{k})"
        )
    return replace(stored, resume=True, progress=given.progress, **updates)


def open_run(cfg: Any, cls: type, missing: dict[str, Any] | None = None, main: bool = True) -> tuple[Any, RunFolder]:
    """The run folder of ``cfg.out`` for every training command. With ``cfg.resume`` the config is
    the run's own ``config.yaml`` (only ``progress`` is taken from the command line); without it, a
    folder that already holds a run is refused rather than overwritten. Only the ``main`` process
    of a multi-process run locks and repairs the folder (the others only read it)."""
    run = RunFolder(cfg.out)
    if run.root.exists() and not run.root.is_dir():
        raise ConfigError(f"--out {run.root} is a file; a run needs a folder")
    check_writable_folder(run.root, "--out", run.root)
    if main:
        run.lock()
        recover_dir(run.checkpoint_dir)  # a kill mid-write may have left them moved aside
        recover_dir(run.policy_dir)
        clean_leftovers(run.root)  # temporaries of single-file writes a kill interrupted
    if not cfg.resume and getattr(cfg, "overwrite", False) and run.holds_run():
        run.clear_before_writing = True
    if cfg.resume:
        cfg = resumed_config(cfg, run.read_config(cls, missing), run.config_path, announce=main)
        if not run.has_checkpoint():
            raise ConfigError(
                f"cannot resume: {cfg.out} has no checkpoint yet (the run stopped before its first one); "
                "start it again without --resume"
            )
    elif run.holds_run() and not run.clear_before_writing and main:  # the main process may have written it already
        raise ConfigError(
            f"{cfg.out} already holds a run; pass --resume to continue it, --overwrite to replace it, "
            "or choose another --out"
        )
    return cfg, run
