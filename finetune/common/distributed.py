"""Several processes (``accelerate launch`` or ``dpft ... --processes N``): who runs which envs.

A rollout of ``E`` envs is split by *env slot*: process ``r`` of ``W`` runs the slots
``r, r + W, r + 2W, ...``. A slot is what one env of the single-process run is: it is reset with
``seed + slot``, runs the same quota of episodes, and its rows of every batched draw (the initial
noise, an expert's action noise) are the rows that env would get from the full ``[E, ...]``
draw. So each slot plays exactly the episodes it plays in one process, and after the results
are gathered, 1 process and N processes report the same episodes and the same numbers
(``tests/test_distributed.py``; it holds while the policy's chunk for one row does not depend on
the other rows of its batch, which MKL keeps for batches of two or more rows here).

Only the main process prints, writes files and TensorBoard. A process that dies takes the
launch down: ``accelerate launch`` (torch's elastic agent) stops the other processes and names
the failed rank, and every collective here has a timeout, so nothing waits forever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from dpft.base_policies.infra.errors import ConfigError

COLLECTIVE_TIMEOUT = timedelta(seconds=float(os.environ.get("DPFT_COLLECTIVE_TIMEOUT", "600")))
"""How long a process waits for the others at a gather before it gives up with an error."""


@dataclass(frozen=True)
class Shard:
    """This process's share of a multi-process run (rank 0 of 1 outside a launcher)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def slots(self, total: int) -> list[int]:
        """The env slots (of ``total``) this process runs."""
        return list(range(self.rank, total, self.world))

    def check_slots(self, envs: int, episodes: int) -> None:
        """Every process needs a slot with an episode to run."""
        busy = min(envs, episodes)
        if self.world > busy:
            raise ConfigError(
                f"{self.world} processes but only {busy} env slot(s) with episodes to run (--envs {envs}, "
                f"--episodes {episodes}); use --processes {busy} or fewer, or raise --envs/--episodes"
            )

    def gather(self, items: list[Any]) -> list[Any]:
        """Every process's ``items``, concatenated in rank order, on every process."""
        if self.world == 1:
            return list(items)
        import torch.distributed as dist

        _fault_hook(self.rank)
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, items)
        return [x for part in out for x in part]

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any (e.g. a stop asked of one of them)."""
        if self.world == 1:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor([int(flag)], device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def mean_(self, tensors: list[Any]) -> None:
        """Replace each tensor by its mean over the processes, in place (one all-reduce for all
        of them: how data-parallel learners average their gradients)."""
        if self.world == 1 or not tensors:
            return
        import torch
        import torch.distributed as dist

        _fault_hook(self.rank)
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(_collective_device())
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))  # back on the tensor's own device
            offset += t.numel()

    def mean_grads_(self, params: list[Any]) -> None:
        """Average the gradients of ``params`` over the processes (data-parallel learners). A
        parameter without a gradient sends zeros: every process must send the same tensors."""
        if self.world == 1:
            return
        import torch

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        with torch.no_grad():
            self.mean_([p.grad for p in params])

    def same_everywhere(self, tensors: list[Any]) -> bool:
        """True when every process holds the same values in ``tensors`` (weights that must agree),
        compared through two checksums rather than the tensors themselves."""
        if self.world == 1:
            return True
        import torch

        with torch.no_grad():
            flat = torch.cat([t.detach().double().reshape(-1).cpu() for t in tensors])
            ramp = torch.arange(1, flat.numel() + 1, dtype=torch.float64)
            sums = torch.stack([flat.sum(), (flat * ramp).sum() / flat.numel()])
        gathered = self.gather([sums])
        return all(torch.equal(gathered[0], s) for s in gathered[1:])


def _collective_device() -> Any:
    """Where a tensor must be for an all-reduce: on this process's GPU when the process group is
    NCCL's (accelerate's choice whenever CUDA is there, even for a run with ``--device cpu``),
    else on the CPU (gloo)."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _fault_hook(rank: int) -> None:
    """For tests: ``DPFT_KILL_RANK=R`` kills process R with SIGKILL at its first collective (a
    gather or a gradient mean), while the others wait for it there (how a crashed or OOM-killed
    rank looks to the rest)."""
    if os.environ.get("DPFT_KILL_RANK") == str(rank):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def launched_world() -> int:
    """The number of processes of the launch this process belongs to (1 outside a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


_SHARD: Shard | None = None


def current_shard() -> Shard:
    """This process's :class:`Shard`; joins the launch's process group on first use (gloo on
    the CPU, NCCL on GPUs, as ``accelerate`` chooses)."""
    global _SHARD
    if _SHARD is None:
        if launched_world() == 1:
            _SHARD = Shard()
        else:
            import torch
            from accelerate import PartialState

            state = PartialState(cpu=not torch.cuda.is_available(), timeout=COLLECTIVE_TIMEOUT)
            _SHARD = Shard(state.process_index, state.num_processes)
    return _SHARD


def close_shard(finished: bool = False) -> None:
    """Leave the launch's process group before the process exits (torch asks for this: a group
    torn down by the interpreter's exit can abort in its transport threads). Safe to call when
    no group was joined.

    ``finished``: the command ended normally on this process, so every other process gets
    there too; they meet at a barrier first. Without it, a process that returns early (the
    ones other than the main one skip writing the results) tears its connections down while the
    main one may still be finishing its last collective; one CI run lost a two-process DSRL run
    that way (the other process aborted in gloo: "terminate called without an active
    exception"). After an error no barrier is tried: the others may never come."""
    global _SHARD
    if _SHARD is not None and _SHARD.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()
    _SHARD = None


def local_device_spec(spec: str) -> str:
    """``--device`` for this process: under a launch with GPUs, ``cuda``/``auto`` mean this
    process's own GPU (``cuda:<local rank>``)."""
    if launched_world() == 1 or spec not in ("auto", "cuda"):
        return spec
    import torch

    if not torch.cuda.is_available():
        return spec
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
