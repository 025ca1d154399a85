"""Rollouts for preference pairs: K noise streams per start state, and chunk-level branches.

Every rollout of a group starts from the same reset seed, so the members differ only by the
policy's noise. All envs of a batch step together and the policy is called once per decision
for all of them. With the deterministic sampler (the policy as it is evaluated) each chunk's
initial noise is drawn from one seeded generator; with the stochastic sampler (what D3PO needs)
the members of a group share each decision's initial noise and differ by the sampler's
per-step noise, as in D3PO, and the chain is kept.

Chunk-level pairs branch from a saved state: a rollout is replayed to decision ``t`` from its
reset seed and executed chunks (every task here is deterministic given those, see
:mod:`dpft.envs.episode_replay`), and each branch then draws its own chunk at ``t`` and lets the policy
finish the episode (or ``horizon`` more decisions).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dpft.base_policies.infra.errors import ConfigError, DpftError
from dpft.base_policies.policy import DenoisingPolicy, Policy
from dpft.envs.chunking import ChunkedEnv
from dpft.envs.config import EnvConfig
from dpft.finetune.common.distributed import Shard
from dpft.finetune.dpo.prefs import Pair, Rollout

SAMPLERS = ("ddim", "stochastic")
BRANCH_NOISE = ("own", "shared")
RANKS = ("success-return", "success", "return")
PAIRINGS = ("all", "best")


@dataclass
class Slot:
    """One env being driven, and what it has recorded so far."""

    env: ChunkedEnv
    obs: np.ndarray
    group: int
    reset_seed: int
    noise: RolloutNoise
    start_decision: int = 0
    stop_after: int | None = None  # decisions after the start; None: to the episode's end
    shared_after: bool = False  # after the first own decision, draw the group's shared noise
    obs_hist: list[np.ndarray] = field(default_factory=list)
    chunks: list[np.ndarray] = field(default_factory=list)
    chains: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    ret: float = 0.0
    length: int = 0
    success: bool = False
    done: bool = False

    def step(self, chunk: np.ndarray, chain: np.ndarray | None) -> bool:
        """Execute ``chunk`` from the current decision and record it; True when the episode ended."""
        self.obs_hist.append(self.obs)
        self.chunks.append(chunk)
        if chain is not None:
            self.chains.append(chain)
        self.obs, _, terminated, truncated, info = self.env.step(chunk)
        self.actions.append(info["step_data"].actions)
        self.length += info["steps"]
        self.success |= bool(info["success"])
        self.ret += float(info["step_data"].rewards.sum())
        return bool(terminated or truncated)

    def initial_noise(self, policy: Policy) -> torch.Tensor:
        """The ddim sampler's initial noise for the next decision."""
        d = len(self.chunks)
        stream = self.noise.shared if self.shared_after and d > self.start_decision else self.noise
        return stream.initial(policy, d)


def check_sampler(policy: Policy, sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: choose one of {SAMPLERS}")
    if sampler == "stochastic" and not isinstance(policy, DenoisingPolicy):
        raise ConfigError(
            f"--sampler stochastic needs a diffusion or flow policy (it keeps the sampler's chain); "
            f"this policy is of type {policy.type_name!r}"
        )


class RolloutNoise:
    """The noise of one rollout, from (seed, group, stream) alone, so a collection gives the same
    rollouts with any number of envs. ``shared`` is the group's: with the stochastic sampler
    the members draw each decision's initial noise from it (the same tensor at the same decision
    index) and their per-step noise from their own generator. ``scale`` multiplies this stream's
    own draws (0: the policy's zero-noise mode), never the group's shared ones; the draws are made
    whatever the scale, so the other streams' noise does not depend on it."""

    def __init__(
        self, seed: int, group: int, stream: int, shared: RolloutNoise | None = None, scale: float = 1.0
    ) -> None:
        key = int(np.random.SeedSequence([seed, group, stream]).generate_state(1)[0])
        self.gen = torch.Generator().manual_seed(key)
        self.shared, self.scale = shared, scale
        self.draws: list[torch.Tensor] = []

    def initial(self, policy: Policy, decision: int) -> torch.Tensor:
        """Initial noise number ``decision`` of this stream (drawn on demand, then cached)."""
        while len(self.draws) <= decision:
            self.draws.append(self.scale * policy.initial_noise(1, self.gen)[0])
        return self.draws[decision]


def group_noise(seed: int, group: int, streams: int, scales: Sequence[float] = (1.0,)) -> list[RolloutNoise]:
    """The noise of a group's ``streams`` members; member k's own draws are scaled by
    ``scales[k % len(scales)]``."""
    shared = RolloutNoise(seed, group, 1_000_003)
    return [RolloutNoise(seed, group, k, shared, scales[k % len(scales)]) for k in range(streams)]


def _padded(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    """``rows`` stacked, then padded to ``width`` rows with copies of the first."""
    return torch.stack(rows + [rows[0]] * (width - len(rows)))


@torch.no_grad()
def _drive(policy: Policy, slots: list[Slot], sampler: str, noise_level: float | None, width: int = 0) -> None:
    """Step every slot to its end, one batched policy call per decision. Every call has
    ``width`` rows (the active slots, padded with copies): MKL picks its kernels by batch size,
    so a rollout's chunks then do not depend on which other rollouts share its batch, or on how
    many processes split the work."""
    while active := [s for s in slots if not s.done]:
        n, width = len(active), max(width, len(active))
        obs = _padded([torch.from_numpy(s.obs) for s in active], width).to(policy.device)
        if sampler == "stochastic":
            noise = _padded([s.noise.shared.initial(policy, len(s.chunks)) for s in active], width)
            k = len(policy.timesteps)
            steps = _padded([torch.randn((k, *policy.noise_shape), generator=s.noise.gen) for s in active], width)
            chunks, chains, _ = policy.sample_chain(obs, noise, steps.to(policy.device), noise_level)
            chunks, chains = chunks[:n], chains[:n].cpu().numpy()
        else:
            noise = _padded([s.initial_noise(policy) for s in active], width)
            chunks, chains = policy.predict_chunk(obs, noise)[:n], None
        chunks = chunks.cpu().numpy()
        for i, s in enumerate(active):
            ended = s.step(chunks[i], None if chains is None else chains[i])
            own = len(s.chunks) - s.start_decision
            s.done = ended or (s.stop_after is not None and own >= s.stop_after)


def _rollout(s: Slot, round_: int) -> Rollout:
    return Rollout(
        obs=np.stack(s.obs_hist),
        chunks=np.stack(s.chunks),
        actions=np.concatenate(s.actions),
        episode_return=s.ret,
        success=s.success,
        length=s.length,
        reset_seed=s.reset_seed,
        group=s.group,
        start_decision=s.start_decision,
        round=round_,
        chains=np.stack(s.chains) if s.chains else None,
    )


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _make_env(env_cfg: EnvConfig, policy: Policy) -> ChunkedEnv:
    return env_cfg.make_chunked(policy, record_steps=True)


def rollout_groups(
    policy: Policy,
    env_cfg: EnvConfig,
    reset_seeds: list[int],
    streams: int,
    sampler: str = "ddim",
    noise_level: float | None = None,
    seed: int = 0,
    round_: int = 0,
    batch_envs: int = 32,
    shard: Shard | None = None,
    noise_scales: Sequence[float] = (1.0,),
) -> list[Rollout]:
    """``streams`` rollouts from each reset seed (group ``j`` = ``reset_seeds[j]``). With a
    ``shard`` of several processes each runs every W-th rollout and all get all of them."""
    check_sampler(policy, sampler)
    work = [(j, s, w) for j, s in enumerate(reset_seeds) for w in group_noise(seed, j, streams, noise_scales)]
    shard = shard or Shard()
    work = work[shard.rank :: shard.world]
    out: list[Rollout] = []
    envs = [_make_env(env_cfg, policy) for _ in range(min(batch_envs, len(work)))]
    try:
        for batch in _batches(work, len(envs)) if work else ():  # more processes than rollouts: none here
            slots = []
            for env, (group, reset_seed, noise) in zip(envs, batch):
                obs, _ = env.reset(seed=reset_seed)
                slots.append(Slot(env, obs, group, reset_seed, noise))
            _drive(policy, slots, sampler, noise_level, batch_envs)
            out += [_rollout(s, round_) for s in slots]
    finally:
        for env in envs:
            env.close()
    return _in_work_order(shard, out)


def _in_work_order(shard: Shard, mine: list[Rollout]) -> list[Rollout]:
    """Every process's rollouts (process r ran items r, r + W, ...) in the order of the work list."""
    parts = shard.gather([mine])
    return [parts[r][i] for i in range(max(len(p) for p in parts)) for r in range(len(parts)) if i < len(parts[r])]


def branch_groups(
    policy: Policy,
    env_cfg: EnvConfig,
    sources: list[Rollout],
    states: int,
    streams: int,
    horizon: int | None,
    sampler: str = "ddim",
    noise_level: float | None = None,
    seed: int = 0,
    round_: int = 0,
    batch_envs: int = 32,
    first_group: int = 0,
    shard: Shard | None = None,
    shared_after: bool = False,
    noise_scales: Sequence[float] = (1.0,),
) -> list[Rollout]:
    """``states`` saved mid-episode states, picked at random from ``sources`` (a rollout and a
    decision before its last), each continued ``streams`` times; group ids start at ``first_group``.
    ``shared_after``: after its own chunk, every branch of a state draws the state's shared noise."""
    check_sampler(policy, sampler)
    rng = np.random.default_rng(seed)
    usable = [r for r in sources if len(r.chunks) >= 2]
    if not usable:
        raise DpftError("chunk-level pairs need rollouts of at least two decisions")
    picks = []
    for g in range(states):
        r = usable[rng.integers(len(usable))]
        picks.append((first_group + g, r, int(rng.integers(1, len(r.chunks)))))
    work = [(g, r, t, w) for g, r, t in picks for w in group_noise(seed, g, streams, noise_scales)]
    shard = shard or Shard()
    work = work[shard.rank :: shard.world]
    out: list[Rollout] = []
    envs = [_make_env(env_cfg, policy) for _ in range(min(batch_envs, len(work)))]
    try:
        for batch in _batches(work, len(envs)) if work else ():
            slots = [_restore(env, g, r, t, horizon, noise, shared_after) for env, (g, r, t, noise) in zip(envs, batch)]
            _drive(policy, slots, sampler, noise_level, batch_envs)
            out += [_rollout(s, round_) for s in slots]
    finally:
        for env in envs:
            env.close()
    return _in_work_order(shard, out)


def _restore(
    env: ChunkedEnv, group: int, r: Rollout, t: int, horizon: int | None, noise: RolloutNoise, shared_after: bool
) -> Slot:
    """Replay rollout ``r`` to decision ``t`` and check that the observation matches."""
    obs, _ = env.reset(seed=r.reset_seed)
    s = Slot(env, obs, group, r.reset_seed, noise, start_decision=t, stop_after=horizon, shared_after=shared_after)
    for k in range(t):
        s.step(r.chunks[k], None if r.chains is None else r.chains[k])
    if not np.allclose(s.obs, r.obs[t], atol=1e-5):
        raise DpftError(
            f"replaying rollout (reset seed {r.reset_seed}) to decision {t} did not reach the recorded state; "
            "chunk-level pairs need a task that is deterministic given its reset seed and actions"
        )
    return s


def score_key(r: Rollout, rank: str) -> tuple[float, ...]:
    if rank == "success":
        return (float(r.success),)
    if rank == "return":
        return (r.episode_return,)
    return (float(r.success), r.episode_return)


def make_pairs(
    rollouts: dict[str, Rollout],
    kind: str,
    rank: str = "success-return",
    min_margin: float = 0.0,
    max_pairs_per_group: int = 0,
    pairing: str = "all",
    labelled: bool = True,
    policy: str = "",
    seed: int = 0,
    first_id: int = 0,
) -> list[Pair]:
    """Pairs within each (round, group). Ranked: every pair whose scores differ by more than
    ``min_margin`` (a success difference always counts, margin 1), ties dropped, at most
    ``max_pairs_per_group`` per group (random ones; 0 = all). ``pairing="best"`` keeps only the
    pairs whose preferred member scores the group's best. Unlabelled (for a person): disjoint
    pairs of members in stored order."""
    if rank not in RANKS:
        raise ConfigError(f"--rank {rank!r}: choose one of {RANKS}")
    if pairing not in PAIRINGS:
        raise ConfigError(f"--pairing {pairing!r}: choose one of {PAIRINGS}")
    rng = np.random.default_rng(seed)
    groups: dict[tuple[int, int], list[str]] = {}
    for rid, r in rollouts.items():
        groups.setdefault((r.round, r.group), []).append(rid)
    pairs: list[Pair] = []
    for key in sorted(groups):
        ids = groups[key]
        if labelled:
            found = []
            for a, b in itertools.combinations(ids, 2):
                ra, rb = rollouts[a], rollouts[b]
                if rank != "return" and ra.success != rb.success:
                    found.append((a, b, 1.0, "success") if ra.success else (b, a, 1.0, "success"))
                    continue
                if rank == "success":
                    continue
                d = ra.episode_return - rb.episode_return
                if abs(d) > min_margin:
                    found.append((a, b, abs(d), "reward") if d > 0 else (b, a, abs(d), "reward"))
            if pairing == "best":
                top = max(score_key(rollouts[i], rank) for i in ids)
                found = [f for f in found if score_key(rollouts[f[0]], rank) == top]
            if max_pairs_per_group and len(found) > max_pairs_per_group:
                found = [found[i] for i in sorted(rng.choice(len(found), max_pairs_per_group, replace=False))]
            for w, lo, margin, source in found:
                pairs.append(_pair(len(pairs) + first_id, kind, w, lo, "chosen", margin, source, rollouts[w], policy))
        else:
            for a, b in zip(ids[0::2], ids[1::2]):
                pairs.append(_pair(len(pairs) + first_id, kind, a, b, None, 0.0, None, rollouts[a], policy))
    return pairs


def _pair(n: int, kind, chosen, rejected, label, margin, source, r: Rollout, policy: str) -> Pair:
    return Pair(f"p{n:06d}", kind, chosen, rejected, label, float(margin), source, r.reset_seed, policy, r.round)
