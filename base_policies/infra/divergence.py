"""Noticing that training diverged (a NaN or inf loss) before anything is saved from it.

Checking ``loss.item()`` every step would make the CPU wait for the GPU at every step. Instead
:class:`DivergenceGuard` keeps, on the device, the first step whose loss or gradient norm was not
finite; the loop asks :meth:`~DivergenceGuard.first_bad_step` only where it matters -- before
every checkpoint and every ``log_every`` steps -- at steps that are the same on every process.
"""

from __future__ import annotations

import torch


class DivergenceGuard:
    """Remembers the first optimiser step (1-based) whose loss or gradient norm was NaN or inf.

    >>> guard = DivergenceGuard(torch.device("cpu"))
    >>> guard.update(1, torch.tensor(0.5), torch.tensor(1.0))
    >>> guard.update(2, torch.tensor(float("nan")), torch.tensor(1.0))
    >>> guard.update(3, torch.tensor(0.5), torch.tensor(float("inf")))
    >>> guard.first_bad_step()
    2
    """

    def __init__(self, device: torch.device) -> None:
        self._first = torch.full((), -1, dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | float | None) -> None:
        bad = ~torch.isfinite(loss.detach())
        if grad_norm is not None:
            bad |= ~torch.isfinite(torch.as_tensor(grad_norm, device=loss.device))
        self._first = torch.where(bad & (self._first < 0), step, self._first)

    def first_bad_step(self, accelerator=None) -> int | None:
        """The first bad step over all processes (a collective under ``accelerator``), or None."""
        first = self._first.reshape(1)
        if accelerator is not None:
            first = accelerator.gather(first)
        bad = first[first >= 0]
        return int(bad.min()) if len(bad) else None
