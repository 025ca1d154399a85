"""How many CPU threads one dpft process gives torch.

torch's default is one OpenMP thread per core, and its threads spin while they wait for work.
Two such processes on a 2-core machine (two benchmark runs, or two ranks of ``accelerate
launch``) then take turns spinning: BC training fell from ~45 to ~11 steps/s each and a batch-8
chunk from 4 ms to 70-570 ms (``experiments/results/threads.md``). A second thread helps a
lone BC run a little and makes small-batch sampling slower. dpft therefore

- gives the rollout-heavy commands (eval, collect, prefs, fine-tuning) **one thread**;
- gives commands marked ``all_cores`` (``train-bc``) the cores divided among the processes of a
  launch on this machine (``LOCAL_WORLD_SIZE``, set by ``accelerate launch`` and ``torchrun``);
- lets idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy;
- honours ``--threads N`` (any command), then ``DPFT_THREADS``, then ``OMP_NUM_THREADS``.

:func:`prepare_threads` runs before torch is imported (OpenMP reads its wait policy once);
:func:`apply_threads` sets torch's pool once the command is known.
"""

from __future__ import annotations

import os

from dpft.base_policies.infra.errors import ConfigError


def local_processes() -> int:
    """Processes of this launch on this machine (1 outside a launcher)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_threads() -> int:
    return max(1, (os.cpu_count() or 1) // local_processes())


def parse_count(value: str | None, source: str, unit: str, units: str) -> int | None:
    """``value`` as a whole number >= 1 (None when not given), or one message naming ``source``."""
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{source} {value!r}: give a whole number of {units} (>= 1)") from None
    if n < 1:
        raise ConfigError(f"{source} {n}: give at least 1 {unit}")
    return n


def parse_threads(value: str | None, source: str) -> int | None:
    return parse_count(value, source, "thread", "threads")


def prepare_threads(flag: str | None = None) -> int | None:
    """The thread count the user asked for (``--threads``, ``DPFT_THREADS``, ``OMP_NUM_THREADS``),
    or None; sets the OpenMP wait policy. Call before importing torch."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if flag is None and os.environ.get("DPFT_THREADS") == "default":  # set by `--processes`: torchrun's
        return None  # OMP_NUM_THREADS=1 for every process is not the user's choice
    n = parse_threads(flag, "--threads") or parse_threads(os.environ.get("DPFT_THREADS"), "DPFT_THREADS")
    return n or parse_threads(os.environ.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS")


def apply_threads(asked: int | None, all_cores: bool = False) -> int:
    """Set torch's intra-op threads: ``asked``, else the default of the command (see the module
    docstring); exported as ``OMP_NUM_THREADS`` for any process the command starts."""
    import torch

    n = asked or (default_threads() if all_cores else 1)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
