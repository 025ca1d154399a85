"""Demonstrations in the residual's replay: part of every batch from a demonstration file.

RLPD and ResFiT sample half of each off-policy batch from offline demonstrations: with a sparse
reward, the first successes in the online buffer are rare, while every demonstration ends in one,
so the critic sees where reward is from the first gradient step. A demonstration is not a
residual transition by itself; it becomes one by asking what correction the residual would have
had to output for the base to take the demonstrated action:

* the base is run on the demonstration's observation histories, a new chunk every
  ``action_horizon`` steps from the start of the episode, as :class:`~.env.ResidualVecEnv` runs it,
  with seeded noise;
* the correction is ``r = clip((a_demo - a_base) / (scale * half_range), -1, 1)`` (clipped where
  the demonstrator did something the residual cannot reach);
* the observation is what the residual sees (:class:`~.policy.Features`: history and base action);
* the reward is the run's: the sparse success reward that ends the episode needs each episode's
  ``success_step`` (``dpft collect`` records it), the task's own reward the file's ``rewards``.

Only the per-step form is supported (a chunk form would correct whole chunks the demonstrator
never committed to).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import NStepReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from dpft.base_policies.data import Episode
from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.policy import Policy
from dpft.finetune.residual.policy import Features

SPARSE_TERMINATE = "sparse_success(terminate=True)"


@dataclass
class DemoTransitions:
    """Residual transitions made from demonstrations, in episode order."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    dones: np.ndarray
    ends: np.ndarray
    """The last kept transition of each demonstration."""
    clipped: float
    """Share of correction coordinates clipped to [-1, 1] (the base was too far from the demonstrator)."""

    def __len__(self) -> int:
        return len(self.actions)


def demo_reward_kind(reward: str | None) -> str:
    """``sparse`` (the success reward that ends the episode) or ``dense`` (the task's own), the two
    rewards a demonstration file can give; anything else is refused."""
    if reward in (None, "dense"):
        return "dense"
    if reward.replace(" ", "") == SPARSE_TERMINATE:
        return "sparse"
    raise ConfigError(
        f"--demos with --reward {reward!r}: demonstrations carry only the task's own reward and the step of "
        "their first success, so use --reward dense or sparse_success(terminate=True)"
    )


def histories(obs: np.ndarray, horizon: int) -> np.ndarray:
    """``[T, To, D]``: step t's last ``horizon`` observations, the first repeated before the start
    (as :class:`~dpft.envs.chunking.ChunkedEnv` pads)."""
    idx = np.arange(len(obs))[:, None] + np.arange(1 - horizon, 1)[None]
    return obs[np.clip(idx, 0, None)]


@torch.no_grad()
def base_actions(base: Policy, hist: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[T, A]``: what the base executes at each step, a new chunk every ``action_horizon`` steps."""
    k = base.action_horizon
    starts = hist[::k]
    noise = None
    if not base.chooses_noise:
        noise = torch.as_tensor(rng.standard_normal((len(starts), *base.noise_shape), dtype=np.float32))
        noise = noise.to(base.device)
    x = torch.as_tensor(starts, dtype=torch.float32, device=base.device)
    chunks = base.predict_chunk(x, noise)[:, :k].cpu().numpy()
    return chunks.reshape(-1, chunks.shape[-1])[: len(hist)]


def residual_transitions(
    episodes: list[Episode], base: Policy, features: Features, scale: float, reward: str | None, seed: int
) -> DemoTransitions:
    """See the module docstring."""
    kind = demo_reward_kind(reward)
    if episodes[0].actions.shape[1] != base.action_dim or episodes[0].obs.shape[1] != base.obs_dim:
        raise ConfigError(
            f"--demos: the demonstrations have observation/action sizes {episodes[0].obs.shape[1]}/"
            f"{episodes[0].actions.shape[1]} but the base policy {base.obs_dim}/{base.action_dim}"
        )
    rng = np.random.default_rng([seed, 0xDE705])
    half = (features.half_range * scale).cpu().numpy()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "dones", "ends")}
    for ep in episodes:
        hist = histories(ep.obs, base.obs_horizon)
        a_base = base_actions(base, hist, rng)
        n, rewards, dones = len(ep), np.zeros(len(ep), np.float32), np.zeros(len(ep), bool)
        if kind == "sparse":
            if ep.success_step is None:
                raise ConfigError(
                    f"--demos: {ep.name} does not record when it first succeeded, which the sparse success "
                    "reward needs; collect the file with `dpft collect` (which records it) or use --reward dense"
                )
            if ep.success_step > 0:
                n = min(ep.success_step, len(ep))
                rewards[n - 1], dones[n - 1] = 1.0, True
        else:
            if ep.rewards is None:
                raise ConfigError(f"--demos: {ep.name} has no rewards; the task's own reward needs them")
            rewards[:] = ep.rewards
        if not dones[n - 1]:
            n -= 1  # the last step of an unfinished episode has no next observation to learn from
        if n <= 0:
            continue
        feats = features(torch.as_tensor(hist, dtype=torch.float32), torch.as_tensor(a_base[:, None]))
        feats = feats.cpu().numpy()
        nxt = np.concatenate([feats[1:], feats[-1:]])  # after a terminal step: a placeholder, never bootstrapped
        parts["obs"].append(feats[:n])
        parts["actions"].append(((ep.actions[:n] - a_base[:n]) / half).astype(np.float32))
        parts["rewards"].append(rewards[:n])
        parts["next_obs"].append(nxt[:n])
        parts["dones"].append(dones[:n])
        parts["ends"].append(np.arange(n) == n - 1)
    if not parts["obs"]:
        raise ConfigError("--demos: no demonstration has a transition to learn from")
    out = {k: np.concatenate(v) for k, v in parts.items()}
    clipped = float((np.abs(out["actions"]) > 1).mean())
    actions = np.clip(out["actions"], -1, 1)
    return DemoTransitions(out["obs"], actions, out["rewards"], out["next_obs"], out["dones"], out["ends"], clipped)


def demo_buffer(
    demos: DemoTransitions, obs_space: spaces.Box, act_space: spaces.Box, device, n_steps: int, gamma: float
) -> NStepReplayBuffer:
    """The transitions in a buffer of their own, in episode order, so n-step returns stop at the
    end of each demonstration as they do online."""
    buf = NStepReplayBuffer(len(demos) + 1, obs_space, act_space, device, n_envs=1, n_steps=n_steps, gamma=gamma)
    for i in range(len(demos)):
        buf.add(demos.obs[i : i + 1], demos.next_obs[i : i + 1], demos.actions[i : i + 1],
                demos.rewards[i : i + 1], demos.dones[i : i + 1], [{}])  # fmt: skip
    # an unfinished demonstration's last kept step ends its n-step sums like a time limit (bootstrapped)
    buf.timeouts[: len(demos), 0] = demos.ends & ~demos.dones
    return buf


class DemoMixReplayBuffer(NStepReplayBuffer):
    """SB3's n-step buffer whose batches take ``demo_ratio`` of their rows from ``demos``
    (RLPD's symmetric sampling at 0.5). The demonstrations are pickled with the buffer, so a
    resumed run samples the same ones."""

    demos: NStepReplayBuffer | None = None
    demo_ratio: float = 0.0

    def sample(self, batch_size: int, env=None) -> ReplayBufferSamples:
        n_demo = int(round(self.demo_ratio * batch_size)) if self.demos is not None else 0
        online = super().sample(batch_size - n_demo, env)
        if n_demo == 0:
            return online
        offline = self.demos.sample(n_demo, env)
        return ReplayBufferSamples(*(torch.cat([a, b]) for a, b in zip(online, offline)))
