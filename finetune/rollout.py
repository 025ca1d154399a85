"""The one rollout loop: step a vector of chunked envs with a batched policy.

Evaluation, demonstration collection and (later) preference-pair collection all call
:func:`run_episodes`. The policy is called once per vector step on the whole batch of
observation histories. Each env runs a fixed quota of episodes, so which episodes are
collected does not depend on which envs happen to finish first: results are a function of
(policy, task, seed, number of envs).
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

ChunkFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class EpisodeResult:
    env_index: int
    episode_return: float
    length: int
    success: bool
    success_step: int
    steps: Episode | None = field(default=None, repr=False)


def policy_chunk_fn(policy: Policy, generator: torch.Generator | None = None, zero_noise: bool = False) -> ChunkFn:
    """Adapt a :class:`Policy` to ``obs history [N, To, D] -> chunks [N, H, A]`` (numpy).
    ``zero_noise`` feeds all-zero initial noise (the policy's deterministic mode)."""

    def fn(obs: np.ndarray) -> np.ndarray:
        noise = torch.zeros(obs.shape[0], *policy.noise_shape) if zero_noise else None
        return policy.predict_chunk(torch.from_numpy(obs), noise, generator=generator).cpu().numpy()

    return fn


def _final_infos(infos: dict) -> list[tuple[int, dict]]:
    """(env index, info) for every env whose episode ended in this step (SAME_STEP autoreset)."""
    final = infos.get("final_info")
    if final is None:
        return []
    return [(int(i), _index(final, i)) for i in np.flatnonzero(infos["_final_info"])]


def _index(batched: dict, i: int) -> dict:
    """Entry ``i`` of a vector env's batched info dict (nested dicts are batched recursively)."""
    return {k: _index(v, i) if isinstance(v, dict) else v[i] for k, v in batched.items() if not k.startswith("_")}


def run_episodes(
    chunk_fn: ChunkFn,
    venv: gym.vector.VectorEnv,
    num_episodes: int,
    seed: int | None = 0,
    progress: bool = False,
    record_steps: bool = False,
) -> list[EpisodeResult]:
    """Run ``num_episodes`` episodes and return their statistics (and per-step data when the
    envs were built with ``record_steps=True``), ordered by (env index, episode index)."""
    n = venv.num_envs
    quota = np.array([num_episodes // n + (i < num_episodes % n) for i in range(n)])
    done = np.zeros(n, int)
    per_env: list[list[EpisodeResult]] = [[] for _ in range(n)]
    buffers: list[list[StepData]] = [[] for _ in range(n)]
    obs, _ = venv.reset(seed=seed)
    bar = tqdm(total=num_episodes, disable=not progress, desc="episodes", unit="ep")
    while (done < quota).any():
        obs, _, _, _, infos = venv.step(chunk_fn(obs))
        if record_steps and "step_data" in infos:
            for i in np.flatnonzero(infos["_step_data"]):
                if done[i] < quota[i]:
                    buffers[i].append(infos["step_data"][i])
        for i, info in _final_infos(infos):
            if done[i] >= quota[i]:
                continue
            if record_steps:
                buffers[i].append(info["step_data"])
            ep = info["episode"]
            steps = _to_episode(buffers[i], f"env{i}_ep{done[i]}") if record_steps else None
            buffers[i] = []
            per_env[i].append(
                EpisodeResult(
                    i, float(ep["return"]), int(ep["length"]), bool(ep["success"]), int(ep["success_step"]), steps
                )
            )
            done[i] += 1
            bar.update(1)
    bar.close()
    return [r for results in per_env for r in results]


def _to_episode(chunks: list[StepData], name: str) -> Episode:
    obs = np.concatenate([c.obs for c in chunks])
    actions = np.concatenate([c.actions for c in chunks])
    rewards = np.concatenate([c.rewards for c in chunks])
    dones = np.zeros(len(actions), bool)
    dones[-1] = True
    return Episode(name, obs, actions, rewards, dones)
