"""The one rollout loop: step a vector of chunked envs with a batched policy.

Evaluation (every method's periodic, validation and final episodes, DPO's rounds included),
demonstration collection, videos and benchmarks all call :func:`run_episodes`. Preference-pair
collection (:mod:`dpft.finetune.dpo.sampling`) drives its envs itself: each of its rollouts has
its own noise stream and may start from a state replayed mid-episode, and its batches are padded
to a fixed width so that a rollout's chunks do not depend on its neighbours.

The policy is called once per vector step on the whole batch of observation histories. Each
env runs a fixed quota of episodes, so which episodes are collected does not depend on which
envs happen to finish first: results are a function of (policy, task, seed, number of envs).

A chunk function maps observation histories ``[N, To, D]`` to chunks ``[N, H, A]``, or to
``(chunks, extras)`` where ``extras`` is a dict of per-decision arrays with leading dim ``N``
(the initial noise behind each chunk, a sampler's chain, ...). Every episode gets the extras of
its own decisions, stacked per key::

    decision t of an episode:  obs history ──chunk_fn──▶ chunk t, extras[key][t]
                               env executes chunk t[:action_horizon] ──▶ steps, frame t + 1

A chunk function may have a ``reset(done)`` attribute (``policy_chunk_fn`` forwards
:meth:`Policy.reset`): it is called with ``None`` after the vector env's reset and with the
boolean mask of envs whose episode ended after every step where one did, so a stateful policy
(a per-step residual) starts each env's new episode afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from dpft.base_policies.data import Episode
from dpft.base_policies.policy import Policy
from dpft.envs.chunking import StepData

Extras = dict[str, np.ndarray]
ChunkFn = Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, Extras]]


@dataclass
class EpisodeResult:
    env_index: int
    episode_return: float
    length: int
    success: bool
    success_step: int
    steps: Episode | None = field(default=None, repr=False)
    """Per-step data (``record_steps=True``)."""
    decisions: Extras = field(default_factory=dict, repr=False)
    """The chunk function's extras of this episode's T decisions, per key ``[T, ...]``."""
    frames: np.ndarray | None = field(default=None, repr=False)
    """``[T + 1, height, width, 3]``: the reset frame, then one after each executed chunk
    (envs built with ``render_frames=True``)."""


def policy_chunk_fn(
    policy: Policy,
    generator: torch.Generator | None = None,
    zero_noise: bool = False,
    return_noise: bool = False,
    rows: EnvSlots | None = None,
) -> ChunkFn:
    """Adapt a :class:`Policy` to ``obs history [N, To, D] -> chunks [N, H, A]`` (numpy).

    ``zero_noise`` feeds all-zero initial noise (the policy's deterministic mode).
    ``return_noise`` also returns the initial noise of each chunk as the extra ``"noise"``
    (``[N, *noise_shape]``), so ``policy.predict_chunk(obs, noise)`` reproduces the chunk (for a
    stateless policy). The
    noise is what a base policy draws itself from ``generator``, so its chunks do not change;
    a policy that picks its own noise when given none (a steered policy) is fed N(0, I) instead.

    The noise of a call is one ``[E, *noise_shape]`` draw for all E envs of the run, of which
    this process takes the rows of its env slots (``rows``; all of them in one process), so an
    env's noise does not depend on which process runs it (:mod:`dpft.finetune.common.distributed`).
    With ``rows`` a part of the run, the policy is still called on all E rows (this process's
    rows in their places, copies of its first row elsewhere): MKL picks its kernels by batch
    size, and a batch of 2 gives chunks that differ from a batch of 4 in the last bits, which a
    contact-rich task turns into another episode. At these batch sizes a call costs about the
    same for 2 or 8 rows.
    """
    part = rows is not None and len(rows.indices) != rows.total
    index = list(rows.indices) if rows is not None else None

    def fn(obs: np.ndarray) -> np.ndarray | tuple[np.ndarray, Extras]:
        x = torch.from_numpy(obs).to(policy.device)
        if part:
            x = x[:1].repeat(rows.total, *([1] * (x.dim() - 1))).index_copy_(0, torch.tensor(index, device=x.device), x)
        if zero_noise:
            noise = torch.zeros(len(x), *policy.noise_shape, device=policy.device)
        elif return_noise or not policy.chooses_noise:
            noise = policy.initial_noise(len(x), generator)
        else:
            noise = None
        chunks = policy.predict_chunk(x, noise, generator=generator).cpu().numpy()
        if part:
            chunks, noise = chunks[index], None if noise is None else noise[index]
        return (chunks, {"noise": noise.cpu().numpy()}) if return_noise else chunks

    def reset(done: np.ndarray | None) -> None:
        if done is not None and part:
            full = np.zeros(rows.total, bool)
            full[index] = done
            done = full
        policy.reset(None if done is None else torch.as_tensor(done))

    if policy.stateful:  # stateless policies need no per-step bookkeeping in the rollout loop
        fn.reset = reset
    return fn


@dataclass(frozen=True)
class EnvSlots:
    """The env slots (global indices, of ``total``) that this process's vector env runs."""

    indices: tuple[int, ...]
    total: int

    @classmethod
    def all(cls, n: int) -> EnvSlots:
        return cls(tuple(range(n)), n)


@dataclass
class _Running:
    """What one env has recorded so far of the episode it is running."""

    steps: list[StepData] = field(default_factory=list)
    decisions: list[Extras] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)

    def add(self, info: dict, record_steps: bool) -> None:
        if record_steps and "step_data" in info:
            self.steps.append(info["step_data"])
        if "frame" in info:
            self.frames.append(info["frame"])

    def result(self, env_index: int, info: dict, name: str, record_steps: bool) -> EpisodeResult:
        ep = info["episode"]
        keys = self.decisions[0].keys() if self.decisions else ()
        return EpisodeResult(
            env_index,
            float(ep["return"]),
            int(ep["length"]),
            bool(ep["success"]),
            int(ep["success_step"]),
            steps=_to_episode(self.steps, name) if record_steps else None,
            decisions={k: np.stack([d[k] for d in self.decisions]) for k in keys},
            frames=np.stack(self.frames) if self.frames else None,
        )


def _split(out: np.ndarray | tuple[np.ndarray, Extras], n: int) -> tuple[np.ndarray, Extras]:
    chunks, extras = out if isinstance(out, tuple) else (out, {})
    for key, value in extras.items():
        if len(value) != n:
            raise ValueError(f"chunk function extra {key!r} has {len(value)} rows; expected one per env ({n})")
    return chunks, extras


def _final_infos(infos: dict) -> list[tuple[int, dict]]:
    """(env index, info) for every env whose episode ended in this step (SAME_STEP autoreset)."""
    final = infos.get("final_info")
    if final is None:
        return []
    return [(int(i), _index(final, i)) for i in np.flatnonzero(infos["_final_info"])]


def _index(batched: dict, i: int) -> dict:
    """What env ``i`` reported in a vector env's batched info dict (nested dicts recursively)."""
    return {
        k: _index(v, i) if isinstance(v, dict) else v[i]
        for k, v in batched.items()
        if not k.startswith("_") and (f"_{k}" not in batched or batched[f"_{k}"][i])
    }


def run_episodes(
    chunk_fn: ChunkFn,
    venv: gym.vector.VectorEnv,
    num_episodes: int,
    seed: int | None = 0,
    progress: bool = False,
    record_steps: bool = False,
    slots: EnvSlots | None = None,
) -> list[EpisodeResult]:
    """Run ``num_episodes`` episodes and return their statistics, ordered by (env index,
    episode index), with each episode's per-step data (``record_steps``; the envs must be
    built with ``record_steps=True``), the extras of its decisions (when ``chunk_fn`` returns
    them) and its frames (when the envs were built with ``render_frames=True``).

    ``slots``: this process runs only these env slots of a larger run (its vector env has one
    env per slot); each slot gets the seed and episode quota it has in the whole run, and
    ``env_index`` is the slot. ``num_episodes`` counts the whole run's episodes."""
    n = venv.num_envs
    slots = slots or EnvSlots.all(n)
    if len(slots.indices) != n:
        raise ValueError(f"{len(slots.indices)} env slots for a vector env of {n} envs")
    total = slots.total
    quota = np.array([num_episodes // total + (i < num_episodes % total) for i in slots.indices])
    done = np.zeros(n, int)
    per_env: list[list[EpisodeResult]] = [[] for _ in range(n)]
    running = [_Running() for _ in range(n)]
    reset = getattr(chunk_fn, "reset", None) or (lambda done: None)
    obs, infos = venv.reset(seed=None if seed is None else [seed + i for i in slots.indices])
    reset(None)
    if "frame" in infos:
        for i in range(n):
            running[i].add(_index(infos, i), record_steps)  # the first frame
    bar = tqdm(total=int(quota.sum()), disable=not progress, desc="episodes", unit="ep")
    while (done < quota).any():
        chunks, extras = _split(chunk_fn(obs), n)
        active = np.flatnonzero(done < quota)
        if extras:
            for i in active:
                running[i].decisions.append({k: v[i] for k, v in extras.items()})
        obs, _, terminated, truncated, infos = venv.step(chunks)
        if (ended := np.logical_or(terminated, truncated)).any():
            reset(ended)
        for i, info in _final_infos(infos):  # the last step of an episode, before the next one's reset
            if done[i] >= quota[i]:
                continue
            running[i].add(info, record_steps)
            slot = slots.indices[i]
            per_env[i].append(running[i].result(slot, info, f"env{slot}_ep{done[i]}", record_steps))
            running[i] = _Running()
            done[i] += 1
            bar.update(1)
        if record_steps or "frame" in infos:  # per-env copies of the info only when something is kept
            for i in active:  # the step's info, or the reset info of the episode that just began
                if done[i] < quota[i]:
                    running[i].add(_index(infos, i), record_steps)
    bar.close()
    return [r for results in per_env for r in results]


def _to_episode(chunks: list[StepData], name: str) -> Episode:
    obs = np.concatenate([c.obs for c in chunks])
    actions = np.concatenate([c.actions for c in chunks])
    rewards = np.concatenate([c.rewards for c in chunks])
    dones = np.zeros(len(actions), bool)
    dones[-1] = True
    return Episode(name, obs, actions, rewards, dones)
