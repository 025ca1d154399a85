"""Reading and writing files with one-line errors, by class of failure.

What the file system or a file's bytes can do to a command falls into a few classes: the path is
missing, a folder, unreadable, on a full or read-only disk, a symbolic-link loop; the bytes are not
UTF-8, not JSON/YAML, or JSON of the wrong shape. :func:`file_error` turns any of them into a
:class:`FileError` that names the file and says what to do; the readers below use it, and the CLI
applies it to whatever ``OSError`` or ``UnicodeError`` still reaches it, so a case nobody listed
ends the same way (tests/test_fuzz.py generates such cases).

:func:`interpreting` covers the last class, a file that parses but holds something else than dpft
wrote (``{"step": "x"}`` where a number belongs): any ``KeyError``/``TypeError``/... raised while
the block reads the parsed data becomes one error naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dpft.base_policies.infra.errors import DpftError

ADVICE = {
    errno.ENOENT: "it does not exist; check the path",
    errno.EACCES: "permission denied; make it readable/writable for this user (chmod/chown) or choose another path",
    errno.EPERM: "operation not permitted; check its owner and permissions",
    errno.EISDIR: "it is a folder where a file belongs; give the file's path",
    errno.ENOTDIR: "a part of the path is a file where a folder belongs",
    errno.ENOSPC: "no space left on the device; free some space and run again (a run continues with --resume)",
    errno.EDQUOT: "the disk quota is exceeded; free some space and run again (a run continues with --resume)",
    errno.EROFS: "the file system is read-only; choose a writable path",
    errno.ELOOP: "too many levels of symbolic links (a link loop); fix the link",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or use fewer --envs",
    errno.EIO: "an input/output error from the device; check the disk",
    errno.EEXIST: "it exists already",
    errno.ENOTEMPTY: "the folder is not empty",
}


class FileError(DpftError):
    """A file or folder cannot be read or written, or its bytes are not what dpft expects."""


def file_error(e: BaseException, path: Path | str | None = None, what: str = "file") -> FileError:
    """One line for an ``OSError``/``UnicodeError``/``SafetensorError`` met at ``path``."""
    name = path if path is not None else getattr(e, "filename", None)
    where = f"{what} {name}" if name is not None else what
    if isinstance(e, UnicodeDecodeError):
        return FileError(
            f"{where} is not UTF-8 text (byte {e.object[e.start : e.start + 1]!r} at offset {e.start}); "
            "is it the right file? A damaged file must be restored or written again"
        )
    if isinstance(e, UnicodeError):
        return FileError(f"{where}: {e}; use UTF-8 text")
    code = getattr(e, "errno", None) or _errno_in_message(str(e))
    if code in ADVICE:
        return FileError(f"cannot use {where}: {ADVICE[code]}")
    reason = getattr(e, "strerror", None) or " ".join(str(e).split()) or type(e).__name__
    return FileError(f"cannot use {where}: {reason}")


def _errno_in_message(message: str) -> int | None:
    """safetensors reports OS errors as text ("... Os { code: 28, kind: StorageFull ...")."""
    marker = "code: "
    if "Os {" in message and marker in message:
        digits = message.split(marker, 1)[1].split(",", 1)[0].strip()
        return int(digits) if digits.isdigit() else None
    return None


@contextlib.contextmanager
def file_errors(path: Path | str | None = None, what: str = "file") -> Iterator[None]:
    """Turn ``OSError``/``UnicodeError`` raised in the block into a :class:`FileError`."""
    try:
        yield
    except (OSError, UnicodeError) as e:
        raise file_error(e, path, what) from None


def read_text(path: Path | str, what: str = "file") -> str:
    """The UTF-8 text of ``path``, or one :class:`FileError` saying why not."""
    with file_errors(path, what):
        return Path(path).read_text(encoding="utf-8")


def read_json(path: Path | str, what: str = "file", shape: type = dict) -> Any:
    """Parsed JSON of ``path`` whose top level is a ``shape`` (dict or list)."""
    text = read_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FileError(f"{what} {path} is not valid JSON ({e}); restore it or write it again") from None
    if not isinstance(data, shape):
        raise FileError(f"{what} {path} holds a JSON {type(data).__name__}, expected a {shape.__name__}")
    return data


STRUCTURE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)
"""What reading parsed data of an unexpected shape raises (``d["step"] + 1`` on a string, ...)."""


HDF5_ERRORS = (*STRUCTURE_ERRORS, RuntimeError, OSError)
"""What h5py raises on damaged bytes inside a file it could open ("bad symbol table node
signature", an attribute that reads as None, ...)."""


@contextlib.contextmanager
def interpreting(
    path: Path | str, what: str, error: type[DpftError] = FileError, fix: str = "",
    errors: tuple[type[BaseException], ...] = STRUCTURE_ERRORS,
) -> Iterator[None]:  # fmt: skip
    """Turn a structure error raised while the block reads the parsed contents of ``path`` into
    one ``error`` naming the file (a :class:`DpftError` raised inside passes unchanged)."""
    try:
        yield
    except DpftError:
        raise
    except errors as e:
        detail = f"{type(e).__name__}: {' '.join(str(e).split())}"[:200]
        advice = fix or "it was not written by this version of dpft or was changed by hand; restore or remove it"
        raise error(f"{what} {path} does not have the layout dpft writes ({detail}); {advice}") from None


def check_keys(
    data: dict[str, Any], schema: dict[str, type | tuple[type, ...]], path: Path | str, what: str,
    error: type[DpftError] = FileError,
) -> None:  # fmt: skip
    """The keys a reader relies on later, with their types (a bool is not a number here)."""
    for key, kind in schema.items():
        value = data.get(key)
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            got = "missing" if key not in data else f"a {type(value).__name__}"
            raise error(f"{what} {path}: {key!r} is {got}, not what dpft writes; restore or remove the file")


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
