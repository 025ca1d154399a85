"""Data-parallel learners for the SB3 methods: every process collects, all learn the same weights.

Under ``accelerate launch`` with N processes (``dpft finetune ... --processes N``) each process
runs its own envs (seeded ``seed + 100_003 * rank``) into its own replay buffer or rollout
buffer, and every optimiser step first averages the gradients over the processes. The models
start identical (the same seed, then rank 0's weights broadcast) and take the same steps at
the same env-step counts (SB3's loop is in lockstep: a fixed number of transitions between
updates), so their weights stay identical; :func:`check_in_sync` verifies that at every
checkpoint and stops the run if not.

Why data-parallel rather than an actor/learner split: the learners here are small MLPs whose
gradient step costs about what collecting the transition costs (``dsrl_na_profile.md``), so a
single learner fed by N actors would be the bottleneck at N = 2; averaging gradients keeps each
process's update on its own fresh data and needs nothing but an all-reduce per step. The price:
the effective batch is N times larger per update, and a run's numbers depend on N.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from dpft.finetune.common.distributed import Shard

RANK_SEED_STRIDE = 100_003
"""Env seeds of process r start at seed + r * RANK_SEED_STRIDE (each env then adds its index)."""


def find_optimizers(model: BaseAlgorithm) -> list[torch.optim.Optimizer]:
    """Every optimiser the algorithm steps: on the algorithm itself (SAC's temperature) and on
    any module it holds (SB3's policy, actor and critics; DSRL-NA's action critic)."""
    found: dict[int, torch.optim.Optimizer] = {}
    holders = [model, *(m for v in vars(model).values() if isinstance(v, nn.Module) for m in v.modules())]
    for holder in holders:
        for value in vars(holder).values():
            if isinstance(value, torch.optim.Optimizer):
                found[id(value)] = value
    return list(found.values())


def modules_of(model: BaseAlgorithm) -> list[nn.Module]:
    """The top-level modules of the algorithm (policy, DSRL-NA's action critic and its target)."""
    return [v for v in vars(model).values() if isinstance(v, nn.Module)]


def average_gradients(model: BaseAlgorithm, shard: Shard) -> None:
    """Make every optimiser step of ``model`` average the gradients over the processes first."""
    for opt in find_optimizers(model):
        step = opt.step

        def averaged_step(*args, _step=step, _opt=opt, **kwargs):
            shard.mean_grads_([p for group in _opt.param_groups for p in group["params"]])
            return _step(*args, **kwargs)

        opt.step = averaged_step


def broadcast_weights(model: BaseAlgorithm) -> None:
    """Rank 0's parameters and buffers everywhere (they already agree; this makes it certain)."""
    import torch.distributed as dist

    with torch.no_grad():
        for module in modules_of(model):
            for t in (*module.parameters(), *module.buffers()):
                dist.broadcast(t.data, 0)
        if getattr(model, "log_ent_coef", None) is not None:
            dist.broadcast(model.log_ent_coef.data, 0)


def check_in_sync(model: BaseAlgorithm, shard: Shard) -> None:
    """Raise when the processes' weights differ (they must not: see the module docstring)."""
    from dpft.base_policies.infra.errors import TrainingError

    if not shard.same_everywhere([t for m in modules_of(model) for t in m.parameters()]):
        raise TrainingError(
            f"the {shard.world} processes' weights differ at env step {model.num_timesteps}; "
            "their updates fell out of step (please report this, with the command)"
        )


class ShareEpisodes(BaseCallback):
    """Make the main process's ``rollout/*`` scalars (``ep_rew_mean``, ``ep_len_mean``,
    ``success_rate``) cover the episodes of every process, not its own only.

    Each process notes the episodes that end in its envs (what SB3's ``_update_info_buffer``
    reads: ``info["episode"]`` from ``Monitor`` and ``info["is_success"]`` at the end); at every
    rollout end, a point every process reaches together, they are gathered, and the main process
    adds the other processes' episodes to its own buffers, from which SB3 computes the scalars."""

    def __init__(self, shard: Shard) -> None:
        super().__init__()
        self.shard = shard
        self.pending: list[tuple[int, dict | None, Any]] = []

    def _on_step(self) -> bool:
        for info, done in zip(self.locals.get("infos", ()), self.locals.get("dones", ()), strict=False):
            episode, success = info.get("episode"), info.get("is_success")
            if episode is not None or (done and success is not None):
                self.pending.append((self.shard.rank, episode, success if done else None))
        return True

    def _on_rollout_end(self) -> None:
        shared, self.pending = self.shard.gather(self.pending), []
        if not self.shard.is_main:
            return
        for rank, episode, success in shared:
            if rank == self.shard.rank:
                continue  # already in this process's buffers
            if episode is not None and self.model.ep_info_buffer is not None:
                self.model.ep_info_buffer.append(episode)
            if success is not None and self.model.ep_success_buffer is not None:
                self.model.ep_success_buffer.append(success)
