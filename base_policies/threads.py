"""How many CPU threads one dpft process gives torch, chosen before torch starts.

torch's default is one OpenMP thread per core, and its threads spin while they wait for work.
Two such processes on a 2-core machine (two benchmark runs, or two ranks of ``accelerate
launch``) then take turns spinning: BC training fell from ~50 to ~5 steps/s each
(``experiments/results/threads.md``). dpft therefore

- splits the cores among the processes of a launch on this machine (``LOCAL_WORLD_SIZE``,
  set by ``accelerate launch`` and ``torchrun``), with at least one thread each;
- lets idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy;
- honours ``--threads N`` (any command), then ``DPFT_THREADS``, then ``OMP_NUM_THREADS``.

:func:`prepare_threads` must run before torch is imported (OpenMP reads its settings once);
:func:`apply_threads` sets torch's intra-op pool after.
"""

from __future__ import annotations

import os

from dpft.base_policies.errors import ConfigError


def local_processes() -> int:
    """Processes of this launch on this machine (1 outside a launcher)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_threads() -> int:
    return max(1, (os.cpu_count() or 1) // local_processes())


def parse_threads(value: str | None, source: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{source} {value!r}: give a whole number of threads (>= 1)") from None
    if n < 1:
        raise ConfigError(f"{source} {n}: give at least 1 thread")
    return n


def prepare_threads(flag: str | None = None) -> int:
    """Choose the thread count and set the OpenMP environment; returns the count. Call before
    importing torch."""
    n = parse_threads(flag, "--threads") or parse_threads(os.environ.get("DPFT_THREADS"), "DPFT_THREADS")
    if n is None:
        n = parse_threads(os.environ.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS") or default_threads()
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("MKL_NUM_THREADS", str(n))
    return n


def apply_threads(n: int) -> None:
    """Set torch's intra-op threads (torch may already have been imported by a plug-in)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
