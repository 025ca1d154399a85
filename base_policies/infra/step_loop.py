"""The loop of a run that takes gradient steps on data it already holds (``dpft train-bc``, each
round of ``dpft finetune dpo``): a method hands in its step function, the loop does the rest.

What the loop owns, so that every such run gets it right the same way:

- the stop protocol of :mod:`~dpft.base_policies.infra.interrupt`: a stop asked for (SIGTERM, a
  first Ctrl-C) is honoured between two steps, after a checkpoint of the state an unstopped run
  would have had there. A second Ctrl-C stops at once: if it cut a step, the method's ``rewind``
  (where it gives one: DPO resets its generators) undoes what the step began; then this process
  alone checkpoints (the others may be stopping too, so no collective). Either way
  :class:`RunInterrupted` says how to resume;
- periodic checkpoints every ``checkpoint_every`` steps (not at the last step: the caller
  checkpoints after what follows it, an evaluation or the final save);
- logging every ``log_every`` steps of the scalars the step returned;
- the progress bar.

What stays with the method: the step itself (data, loss, optimiser, EMA, divergence checks),
what a checkpoint holds, and what happens around the loop (evaluation, rounds, the artifact).
The SB3-based methods do not use it: their loop is SB3's ``learn``, wrapped by
:func:`dpft.finetune.common.run.run_sb3` with the same stop protocol and run folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tqdm import tqdm

from dpft.base_policies.infra.interrupt import RunInterrupted, stop_requested

Scalars = Mapping[str, object]
"""What a step returns for the log: names to numbers (floats, or 0-d tensors read only when logged)."""


def number(value: object) -> float:
    """A logged scalar as a float (a tensor is read with ``.item()``, which also detaches it)."""
    return float(value.item() if hasattr(value, "item") else value)  # type: ignore[arg-type, union-attr]


@dataclass
class StepLoop:
    """Take steps ``start`` .. ``total - 1`` with ``step``; see the module docstring for the contract."""

    step: Callable[[int], Scalars | None]
    """One optimiser step; gets the index of the step it takes (0-based) and returns scalars to log."""
    checkpoint: Callable[[int], None]
    """Write the state after ``n`` completed steps; called by every process at the same step (it may
    hold collectives, and it may refuse by raising, e.g. when training diverged)."""
    resume_hint: str
    """The command that continues the run, e.g. ``dpft train-bc --out runs/bc --resume``."""
    checkpoint_every: int
    where: Callable[[int], str] = lambda n: f"at step {n}"
    """Where the run stopped, in the interrupt message ("in round 1 at step 29")."""
    emergency_checkpoint: Callable[[int], None] | None = None
    """After a second Ctrl-C: write the state on this process alone (default: ``checkpoint``)."""
    rewind: Callable[[], None] | None = None
    """After a second Ctrl-C inside a step: undo what the step began (e.g. reset its random
    generators), so the checkpoint holds the state before it and a resume redoes it exactly."""
    stop_agreed: Callable[[int], bool] = lambda n: stop_requested()
    """Whether to stop before step ``n``; with several processes, a decision they all share."""
    log: Callable[[int, Scalars], None] | None = None
    """Called with the step count and the last step's scalars every ``log_every`` steps."""
    log_every: int = 100
    after_step: Callable[[int], None] | None = None
    """Called with the step count after each step and its logging (validation, divergence checks)."""
    desc: str = "train"
    progress: bool = True

    def run(self, start: int, total: int) -> int:
        """Steps from ``start`` to ``total``; returns the step count reached, ``max(start, total)``.
        Run it inside :func:`~dpft.base_policies.infra.interrupt.graceful_stop`."""
        n, in_step = start, False
        bar = tqdm(total=total, initial=start, disable=not self.progress, desc=self.desc, unit="step")
        try:
            while n < total:
                if self.stop_agreed(n):  # between two steps: the checkpoint is where an unstopped run would be
                    self.checkpoint(n)
                    raise RunInterrupted(self._message(n))
                in_step = True
                scalars = self.step(n)
                in_step = False
                n += 1
                bar.update(1)
                if self.log is not None and n % self.log_every == 0:
                    self.log(n, scalars or {})
                    if scalars and "loss" in scalars:
                        bar.set_postfix(loss=f"{number(scalars['loss']):.4f}")
                if self.after_step is not None:
                    self.after_step(n)
                if n % self.checkpoint_every == 0 and n < total:
                    self.checkpoint(n)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: stop where it stands
            if in_step and self.rewind is not None:
                self.rewind()
            (self.emergency_checkpoint or self.checkpoint)(n)
            raise RunInterrupted(self._message(n)) from None
        finally:
            bar.close()
        return n

    def _message(self, n: int) -> str:
        return f"interrupted {self.where(n)}; continue with: {self.resume_hint}"
