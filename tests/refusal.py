"""What a refused command must look like: exit code 2, one ``error:`` line, no traceback, and every
file that was on disk before unchanged (shared by the bad-input battery and the fuzz test)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` (hidden ones too) with the hash of its bytes."""
    out = {}
    for root in roots:
        for p in root.rglob("*"):
            try:
                if p.is_file() and not p.is_symlink():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            except OSError:  # an unreadable or looping entry a test made on purpose
                out[str(p)] = "unreadable"
    return out


def one_error_line(err: str) -> str:
    """The single ``error:`` line of a refusal's stderr (warnings above it are allowed)."""
    assert "Traceback" not in err, err
    errors = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, f"expected one 'error:' line, got:\n{err}"
    return errors[0]


def unchanged(before: dict[str, str], after: dict[str, str]) -> None:
    assert {k: v for k, v in after.items() if k in before} == before, "a file that was there changed"
    assert set(before) <= set(after), "a file that was there is gone"
