"""The common wrapper: where a policy meets an environment.

:class:`ChunkedEnv` turns a task into an env whose observation is the last
``obs_horizon`` observations and whose action is a whole predicted chunk
``[pred_horizon, action_dim]``; one ``step`` executes the first ``action_horizon`` actions
(stopping early at termination or truncation) and returns their summed, optionally
discounted reward. Episode statistics (return, length, success, first success step) come in
``info["episode"]`` when an episode ends. With ``render_frames=True`` the rendered frame comes
in ``info["frame"]``: after ``reset`` and after each executed chunk (one frame per decision).

:func:`make_vector_env` batches these over a gymnasium vector env, so a policy is called
once per batch of environments, never once per env. Evaluation, data collection and every
fine-tuning method step tasks through this module.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dpft.base_policies.infra.errors import TaskError


@dataclass
class StepData:
    """Per-step data of one executed chunk (an object, so vector envs batch chunks of any
    length): ``obs[k]`` was observed before ``actions[k]`` earned ``rewards[k]``."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray


class Horizons(Protocol):
    """What a chunked env needs to know of a policy (every :class:`Policy` has these)."""

    obs_horizon: int
    pred_horizon: int
    action_horizon: int


def horizons_of(h: Horizons | tuple[int, int, int]) -> tuple[int, int, int]:
    """``(obs_horizon, pred_horizon, action_horizon)`` of a policy, or the tuple itself."""
    return tuple(h) if isinstance(h, tuple) else (h.obs_horizon, h.pred_horizon, h.action_horizon)


class ChunkedEnv(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Observation history + action-chunk execution + episode statistics for one env.

    >>> env = ChunkedEnv(gym.make("Pendulum-v1"), obs_horizon=2, pred_horizon=4, action_horizon=2)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, env.action_space.shape
    ((2, 3), (4, 1))
    >>> obs, reward, terminated, truncated, info = env.step(np.zeros((4, 1), np.float32))
    >>> info["steps"]
    2
    """

    def __init__(
        self,
        env: gym.Env,
        obs_horizon: int = 1,
        pred_horizon: int = 1,
        action_horizon: int = 1,
        gamma: float = 1.0,
        record_steps: bool = False,
        render_frames: bool = False,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self,
            obs_horizon=obs_horizon,
            pred_horizon=pred_horizon,
            action_horizon=action_horizon,
            gamma=gamma,
            record_steps=record_steps,
            render_frames=render_frames,
        )
        gym.Wrapper.__init__(self, env)
        if not 1 <= action_horizon <= pred_horizon:
            raise TaskError(f"action_horizon ({action_horizon}) must be in [1, pred_horizon={pred_horizon}]")
        if render_frames and env.render_mode != "rgb_array":
            raise TaskError(f"render_frames needs an env made with render_mode='rgb_array', not {env.render_mode!r}")
        self.obs_horizon, self.pred_horizon, self.action_horizon = obs_horizon, pred_horizon, action_horizon
        self.gamma, self.record_steps, self.render_frames = gamma, record_steps, render_frames
        o, a = env.observation_space, env.action_space
        self.observation_space = spaces.Box(
            np.repeat(o.low[None], obs_horizon, 0), np.repeat(o.high[None], obs_horizon, 0), dtype=np.float32
        )
        self.action_space = spaces.Box(
            np.repeat(a.low[None], pred_horizon, 0).astype(np.float32),
            np.repeat(a.high[None], pred_horizon, 0).astype(np.float32),
            dtype=np.float32,
        )
        self._history: deque[np.ndarray] = deque(maxlen=obs_horizon)
        self._last_obs: np.ndarray | None = None

    def _stack(self) -> np.ndarray:
        return np.stack(self._history).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._history.clear()
        self._history.extend([obs] * self.obs_horizon)  # pad by repeating the first observation
        self._last_obs = obs
        self._return, self._length, self._success_step = 0.0, 0, -1
        if self.render_frames:
            info = {**info, "frame": self.env.render()}
        return self._stack(), info

    def step(self, chunk: np.ndarray):
        chunk = np.asarray(chunk, dtype=np.float32).reshape(self.action_space.shape)
        total, discount = 0.0, 1.0
        terminated = truncated = chunk_success = False
        rewards, obs_list, info = [], [], {}
        k = 0
        for k in range(self.action_horizon):
            obs_list.append(self._last_obs)
            obs, reward, terminated, truncated, info = self.env.step(chunk[k])
            self._history.append(obs)
            self._last_obs = obs
            total += discount * float(reward)
            discount *= self.gamma
            rewards.append(float(reward))
            self._return += float(reward)
            self._length += 1
            if info.get("success", False):
                chunk_success = True
                if self._success_step < 0:
                    self._success_step = self._length
            if terminated or truncated:
                break
        n = k + 1
        info = dict(info)
        info["steps"] = n
        info["success"] = chunk_success
        if self.record_steps:
            info["step_data"] = StepData(
                np.asarray(obs_list, np.float32), chunk[:n].copy(), np.asarray(rewards, np.float32)
            )
        if self.render_frames:
            info["frame"] = self.env.render()
        if terminated or truncated:
            info["episode"] = {
                "return": self._return,
                "length": self._length,
                "success": self._success_step >= 0,
                "success_step": self._success_step,
            }
        return self._stack(), total, terminated, truncated, info


def make_vector_env(
    make_env: Callable[[], gym.Env],
    num_envs: int,
    obs_horizon: int,
    pred_horizon: int,
    action_horizon: int,
    gamma: float = 1.0,
    record_steps: bool = False,
    vectorization: str = "sync",
    render_frames: bool = False,
) -> gym.vector.VectorEnv:
    """Vector env of :class:`ChunkedEnv`; ``vectorization`` is ``sync`` (default; fastest on
    few cores) or ``async`` (one subprocess per env, for machines with many cores).
    Finished envs are reset in the same step (their last info is in ``final_info``, the new
    episode's reset info in the step's info)."""

    def thunk() -> gym.Env:
        return ChunkedEnv(make_env(), obs_horizon, pred_horizon, action_horizon, gamma, record_steps, render_frames)

    mode = gym.vector.AutoresetMode.SAME_STEP
    if vectorization == "sync":
        return gym.vector.SyncVectorEnv([thunk] * num_envs, autoreset_mode=mode)
    if vectorization == "async":
        return gym.vector.AsyncVectorEnv([thunk] * num_envs, autoreset_mode=mode, context="spawn")
    raise TaskError(f"unknown vectorization {vectorization!r}; choose sync or async")


def check_policy_fits(policy, env: gym.Env | gym.vector.VectorEnv, task: str) -> None:
    """A policy whose observation/action sizes differ from the task's cannot run on it."""
    obs_space = getattr(env, "single_observation_space", env.observation_space)
    act_space = getattr(env, "single_action_space", env.action_space)
    obs_dim, act_dim = obs_space.shape[-1], act_space.shape[-1]
    if (policy.obs_dim, policy.action_dim) != (obs_dim, act_dim):
        inputs = getattr(policy, "describe_inputs", None)
        parts = f" ({inputs()})" if inputs else ""  # e.g. how a LeRobot policy splits the observation
        raise TaskError(
            f"the policy expects observations of size {policy.obs_dim}{parts} and actions of size {policy.action_dim}, "
            f"but task {task!r} has {obs_dim} and {act_dim}; use a policy trained on this task"
        )
    trained_on = recorded_task(policy)
    if trained_on and task and trained_on != task and (trained_on, task) not in _shown_notes:
        _shown_notes.add((trained_on, task))  # once per process: every command checks the fit more than once
        print(
            f"note: the policy was trained on {trained_on!r} and runs on {task!r} (the sizes fit, the task may not)",
            file=sys.stderr,
        )


_shown_notes: set[tuple[str, str]] = set()


def recorded_task(policy) -> str | None:
    """The task a policy records it was trained for (its config's, or its base's), if any."""
    for p in (policy, getattr(policy, "base", None)):
        task = getattr(getattr(p, "config", None), "task", None) or getattr(p, "task", None)
        if isinstance(task, str) and task:
            return task
    return None


class ReportSuccess(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Copy the episode's success (from :class:`ChunkedEnv`'s ``info["episode"]``) to
    ``info["is_success"]``, the key SB3 logs as ``rollout/success_rate``. Goes inside SB3's
    ``Monitor``, which replaces ``info["episode"]`` with its own statistics."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "episode" in info:
            info["is_success"] = info["episode"]["success"]
        return obs, reward, terminated, truncated, info
