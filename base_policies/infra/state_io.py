"""Pickle-free, atomic saving of nested training state.

Optimiser states, LR-scheduler states and RNG states are nested dicts/lists/tuples of
tensors, arrays and plain numbers. ``torch.save`` would pickle them, which means loading
runs arbitrary code. Instead we split the structure into tensors (written with
safetensors) and everything else (written as JSON), with placeholders linking the two.

All writes go to a temporary sibling first and are moved into place with ``os.replace``,
so a run killed mid-write never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dpft.base_policies.infra.errors import CheckpointError
from dpft.base_policies.infra.files import file_error, interpreting

_TENSOR = "__tensor__"
_NDARRAY = "__ndarray__"
_TUPLE = "__tuple__"
_INTKEYS = "__intkeys__"


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {_NDARRAY: key}
    if isinstance(obj, dict):
        int_keys = bool(obj) and all(isinstance(k, int) for k in obj)
        out = {str(k): _flatten(v, tensors) for k, v in obj.items()}
        return {_INTKEYS: out} if int_keys else out
    if isinstance(obj, tuple):
        return {_TUPLE: [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save object of type {type(obj).__name__} in training state")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _NDARRAY in obj:
            return tensors[obj[_NDARRAY]].numpy()
        if _TUPLE in obj:
            return tuple(_unflatten(v, tensors) for v in obj[_TUPLE])
        if _INTKEYS in obj:
            return {int(k): _unflatten(v, tensors) for k, v in obj[_INTKEYS].items()}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: Path) -> None:
    """Give a temp file/dir the permissions a normal create would (mkstemp uses 0600)."""
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~_umask())


FILE_STEPS = ("file-tmp-created", "file-durable", "file-published")
"""Kill points of a single-file write (:func:`set_fault_hook` / ``DPFT_KILL_AT``)."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see either the old or the new file, never half.
    Temporaries of an earlier write of ``path`` that a kill interrupted are deleted first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _reach("file-tmp-created")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        publish_mode(Path(tmp))
        _reach("file-durable")
        os.replace(tmp, path)
        _reach("file-published")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_leftovers(path: Path) -> None:
    """The writer's recovery: delete the temporaries an earlier, killed write of ``path`` left."""
    for stale in _leftovers(Path(path)):
        _delete(stale)


def reach(step: str) -> None:
    """A kill point of a writer outside this module (see :func:`set_fault_hook`)."""
    _reach(step)


def clean_leftovers(folder: Path) -> None:
    """Delete every temporary a kill left in ``folder`` (not below it): ``.NAME.XXXXXXXX.tmp`` and
    ``.NAME.XXXXXXXX.trash`` of interrupted writes. Only the holder of the folder's run lock calls it."""
    pattern = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.(tmp|trash)")
    for p in Path(folder).iterdir() if Path(folder).is_dir() else []:
        if pattern.fullmatch(p.name):
            _delete(p)


# ----- crash-consistent folders ---------------------------------------------------------------
# A folder is published in steps; a kill (SIGKILL, power loss) can stop the process between any
# two of them. The invariant: at every instant either PATH is complete, or PATH is missing and
# .PATH.old is complete (the previous copy, moved aside). ``recover_dir`` turns the second state
# back into the first; every writer and reader of a run folder calls it first.
PUBLISH_STEPS = ("tmp-created", "written", "durable", "old-cleared", "moved-aside", "published", "done")
_fault_hook: Callable[[str], None] | None = None


def set_fault_hook(hook: Callable[[str], None] | None) -> None:
    """Testing aid: ``hook(step)`` runs before each step of :data:`PUBLISH_STEPS` of every folder
    write (a test makes it kill the process at one step). The environment variable
    ``DPFT_KILL_AT=STEP[:N]`` does the same from outside: ``os._exit(137)`` at the N-th (default
    first) time STEP is reached."""
    global _fault_hook
    _fault_hook = hook


def _reach(step: str) -> None:
    if _fault_hook is not None:
        _fault_hook(step)
        return
    spec = os.environ.get("DPFT_KILL_AT")
    if spec:
        name, _, count = spec.partition(":")
        if name == step:
            _KILL_COUNTS[step] = _KILL_COUNTS.get(step, 0) + 1
            if _KILL_COUNTS[step] == int(count or 1):
                os._exit(137)


_KILL_COUNTS: dict[str, int] = {}


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Make every file of ``path``, and the folders that name them, durable."""
    for p in sorted(path.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        _fsync(p)
    _fsync(path)


def readable_copy(path: Path) -> Path:
    """Where a reader finds the complete copy of ``path`` without changing anything on disk: the
    path itself, or the copy a kill left moved aside."""
    path = Path(path)
    return _old(path) if not path.exists() and _old(path).exists() else path


def _leftovers(path: Path) -> list[Path]:
    """Temporaries of ``path``'s unfinished writes (``mkdtemp``/``mkstemp`` names: 8 random
    characters) and trash of finished ones; never another name's files."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.(tmp|trash)")
    return [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)] if path.parent.is_dir() else []


def _delete(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover_dir(path: Path) -> None:
    """Finish what a kill interrupted: bring back a copy that was moved aside and never replaced,
    and delete temporaries of unfinished writes (they can be as large as a replay buffer). Only
    the process that writes ``path`` calls this (it holds the run folder's lock); readers use
    :func:`readable_copy`."""
    path = Path(path)
    old = _old(path)
    if not path.exists() and old.exists():
        os.replace(old, path)
    for stale in _leftovers(path):
        _delete(stale)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces ``path`` only if the block succeeds.

    The new copy is complete and durable (fsynced) before the old one is moved aside, and the old
    one is deleted only after the new one is in place, so a kill at any instruction leaves one
    complete copy on disk (see :func:`recover_dir`; tested by killing at every step).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    _reach("tmp-created")
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _reach("written")
    publish_mode(tmp)
    _fsync_tree(tmp)
    _reach("durable")
    old = _old(path)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)  # a leftover of a finished write: path is complete
        _reach("old-cleared")
        os.replace(path, old)
        _fsync(path.parent)
        _reach("moved-aside")
    os.replace(tmp, path)
    _fsync(path.parent)
    _reach("published")
    if old.exists():  # renamed first: a kill mid-delete leaves trash, never a partial ".old"
        trash = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".trash"))
        os.replace(old, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    _reach("done")


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """Save nested training state to ``folder`` (``state.json`` + ``state.safetensors``)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "state.safetensors"))
    (folder / "state.json").write_text(json.dumps(skeleton))


def load_state(folder: Path) -> dict[str, Any]:
    """Inverse of :func:`save_state`; raises :class:`CheckpointError` on a missing/corrupt file."""
    folder = Path(folder)
    try:
        skeleton = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "state.safetensors"))
    except FileNotFoundError as e:
        raise CheckpointError(f"training state in {folder} is incomplete: {e.filename} is missing") from None
    except (OSError, UnicodeError) as e:  # unreadable, a folder, ...: the file system's class, not "corrupt"
        raise file_error(e, None, "training state file") from None
    except (json.JSONDecodeError, SafetensorError) as e:
        raise CheckpointError(f"training state in {folder} is corrupt ({e}); delete it to start over") from None
    with interpreting(folder / "state.json", "training state", CheckpointError, RESTART):
        if not isinstance(skeleton, dict):
            raise TypeError(f"a JSON {type(skeleton).__name__} at the top level")
        return _unflatten(skeleton, tensors)


RESTART = "restore the checkpoint folder, or start a new run with another --out (or --overwrite)"
"""What to do about a damaged training state."""


def rng_state() -> dict[str, Any]:
    """Capture torch, numpy and Python RNG states so a resumed run draws the same numbers."""
    import random

    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
