"""Stopping a run at a safe point.

A ``kill`` (SIGTERM) or the first Ctrl-C only *requests* a stop; the run checkpoints at its
next safe point and then raises :class:`RunInterrupted`. Every training loop has one: the
fine-tuning methods on SB3 algorithms at the start of the next rollout (after the last gradient
step finished), ``dpft train-bc`` and ``dpft finetune dpo`` between two gradient steps (their
shared :class:`~dpft.base_policies.infra.step_loop.StepLoop`). A run
stopped this way and resumed ends with the same weights as a run that was never stopped. A
second Ctrl-C stops at once (the last periodic checkpoint is kept; BC and DPO also write one
where they stand). Several processes agree on the stop, so they all stop at the same step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_requested = threading.Event()


class RunInterrupted(KeyboardInterrupt):
    """Raised after the checkpoint of a requested stop; the message says how to resume."""


def request_stop() -> None:
    """Ask the running training loop to checkpoint and stop at its next safe point."""
    _requested.set()


def stop_requested() -> bool:
    return _requested.is_set()


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Turn SIGTERM and the first SIGINT into :func:`request_stop` while the block runs."""
    _requested.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        if signum == signal.SIGINT and stop_requested():
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        request_stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        _requested.clear()
