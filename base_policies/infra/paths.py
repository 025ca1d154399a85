"""Output paths are checked before any work starts.

A command that would fail to write its result only after an hour of rollouts, or that would
silently replace a file the user already had, is checked here at parse time instead: the folder
must be writable, an existing file is replaced only with ``--overwrite``, and a file format is
known from its extension.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dpft.base_policies.infra.errors import ConfigError


def check_writable_folder(folder: Path, flag: str, target: Path) -> None:
    """``folder`` exists or can be created, and files can be written in it."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {target}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {target}: cannot write in {existing} (permission denied); choose another path")


def check_output_file(path: Path, overwrite: bool, flag: str = "--out", suffixes: Sequence[str] = ()) -> None:
    """Before any work: ``path`` names a file of a known kind that can be written, and an existing
    one is replaced only with ``--overwrite``."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ConfigError(
            f"{flag} {path}: unknown file type {path.suffix or '(none)'}; use one of {', '.join(suffixes)}"
        )
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise ConfigError(f"{flag} {path} already exists; pass --overwrite to replace it, or choose another name")
    check_writable_folder(path.parent, flag, path)


def check_output_folder(path: Path, overwrite: bool, flag: str = "--out") -> None:
    """Before any work: ``path`` is not a file, and a folder with files in it is replaced only
    with ``--overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file; name a folder")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"{path} exists and is not empty; pass --overwrite to replace it")
    check_writable_folder(path.parent, flag, path)
