"""``dpft <command> --processes N``: start the command under ``accelerate launch`` for the user.

The line it runs is the one a user would write (printed first, so it can be copied to a cluster
script with ``--num_machines`` / ``--machine_rank`` / ``--main_process_ip`` added)::

    accelerate launch --multi_gpu --num_processes N --num_machines 1 -m dpft.finetune <command> ...

``--multi_gpu`` is accelerate's name for "several processes": on a machine without GPUs they
talk over gloo. Each process gets ``--threads`` (default: the cores divided by N).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from dpft.base_policies.infra.errors import ConfigError, DpftError
from dpft.base_policies.infra.threads import parse_count
from dpft.finetune.common.distributed import launched_world

__all__ = ["check_multi_process", "launch", "launched_world", "parse_processes"]


def parse_processes(value: str | None) -> int:
    return parse_count(value, "--processes", "process", "processes") or 1


def check_multi_process(name: str, run: Callable[..., Any], processes: int) -> None:
    """Refuse a command that has no multi-process mode, before any process starts."""
    if not getattr(run, "multi_process", False):
        world = max(processes, launched_world())
        raise ConfigError(
            f"dpft {name} runs in one process only (asked for {world}); eval, collect, prefs collect, "
            "steerability, train-bc and finetune dsrl, residual and dpo run on several. "
            f"Drop --processes (or run it without accelerate launch)"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(name: str, args: list[str], processes: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "dpft.finetune",
        *name.split(),
        *args,
    ]


def launch(name: str, args: list[str], processes: int, threads: str | None) -> int:
    """Run the command with ``processes`` processes; returns the launch's exit status. When a
    process fails, the launcher stops the others; this says which one failed."""
    cmd = launch_command(name, args, processes)
    # each process takes --threads, else its command's own default (torchrun would set 1 for all)
    env = {**os.environ, "DPFT_THREADS": threads or "default"}
    env.pop("OMP_NUM_THREADS", None)
    per_process = threads or "the command's default"
    shown = " ".join(["accelerate", *cmd[3:]])
    print(f"running: {shown}  (threads per process: {per_process})", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    errors = _Tee(sys.stderr)
    while chunk := os.read(proc.stderr.fileno(), 65536):
        errors.feed(chunk.decode(errors="replace"))
    errors.close()
    code = proc.wait()
    if code == 0:
        return 0
    if errors.dpft_errors:  # dpft's own one-line error, shown once above: nothing to add
        return 2
    failed = _failed_rank(errors.text)
    if failed is None and errors.peer_lost:  # only the survivors said something: say it once
        raise DpftError(sorted(errors.peer_lost)[0].removeprefix("error: "))
    where = f"process {failed[0]} ({failed[1]})" if failed else "a process"
    raise DpftError(
        f"{where} of {processes} failed; the launcher stopped the others. "
        "Its output is above; what was already saved (checkpoints, written files) is kept"
    )


PEER_LOST = "error: another process of this run stopped"
"""How a process whose collective failed because a peer died begins its line (see cli.main)."""


def peer_lost(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed because another process of the run died (gloo's
    "Connection closed by peer", a reset, a refused or timed-out connection), in a launched run."""
    if not isinstance(e, RuntimeError) or launched_world() <= 1:
        return False
    text = str(e).lower()
    return any(k in text for k in ("closed by peer", "reset by peer", "connection refused", "broken pipe", "timed out"))


class _Tee:
    """Pass the processes' stderr through as it comes (progress bars included), keep a copy,
    and show each of dpft's ``error: ...`` lines once, not once per process. After such a line
    the rest is the launcher's own report of a failed process, which says nothing more."""

    def __init__(self, out) -> None:
        self.out, self.pending, self.text = out, "", ""
        self.dpft_errors: set[str] = set()
        self.peer_lost: set[str] = set()
        """The survivors' "another process stopped" lines: the launcher's report names the one that did."""
        self.held: list[str] | None = None
        """A traceback being read: shown at the next one or at the end, unless it is the launcher's
        own report of a failed process (``ChildFailedError``, ~40 lines), which dpft's one line
        replaces. A traceback of a process (a bug) is always shown."""

    def feed(self, data: str) -> None:
        self.text += data
        self.pending += data
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            if line.startswith(PEER_LOST):
                self.peer_lost.add(line)
                continue
            if line.startswith("error: ") and line not in self.dpft_errors:
                self.dpft_errors.add(line)
            elif self.dpft_errors:
                continue
            if line.startswith("Traceback (most recent call last)"):
                self._show_held()
                self.held = []
            if self.held is not None:
                self.held.append(line)
                continue
            self.out.write(line + "\n")
        if "\r" in self.pending and not self.dpft_errors:  # a progress bar redrawing its line
            head, _, self.pending = self.pending.rpartition("\r")
            self.out.write(head + "\r")
        self.out.flush()

    def close(self) -> None:
        self.feed("\n" if self.pending else "")
        self._show_held()
        self.out.flush()

    def _show_held(self) -> None:
        block, self.held = self.held, None
        if block and not any("ChildFailedError" in line for line in block):
            self.out.write("\n".join(block) + "\n")


def _failed_rank(stderr: str) -> tuple[int, str] | None:
    """(rank, how it ended) of the root cause in torch elastic's failure report::

    Root Cause (first observed failure):
    [0]:
      rank      : 1 (local_rank: 1)
      exitcode  : -9 (pid: 4615)  (SIGKILL)
    """
    _, found, report = stderr.rpartition("Root Cause")
    if not found:
        return None
    fields: dict[str, str] = {}
    for line in report.splitlines():
        key, _, value = line.strip().partition(":")
        fields.setdefault(key.strip(), value.strip())
    try:
        rank = int(fields.get("rank", "").split()[0])
    except (ValueError, IndexError):
        return None
    code = fields.get("exitcode", "")
    if "(SIG" in code:
        return rank, code.rsplit("(", 1)[-1].rstrip(")")
    return rank, f"exit code {code.split()[0]}" if code else "failed"
