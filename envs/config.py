"""Settings shared by every command that steps a task (eval, collect, fine-tuning)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import gymnasium as gym

from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.ranges import check_ranges
from dpft.envs.chunking import ChunkedEnv, Horizons, horizons_of, make_vector_env
from dpft.envs.rewards import resolve_reward
from dpft.envs.tasks import make


@dataclass
class EnvConfig:
    """Settings shared by every command that steps a task."""

    RANGES: ClassVar[dict[str, str]] = {"envs": ">= 1", "seed": "[0, 1000000000]", "max_episode_steps": ">= 1"}
    """Declared range of each numeric setting (dpft.base_policies.infra.ranges)."""

    task: str = "metaworld:push-v3"
    """Task id: gym:<id>, metaworld:<task>-v3, robotics:<id>, or any registered gymnasium id."""
    envs: int = 8
    """Number of environments stepped together (the policy is called once per batch)."""
    seed: int = 0
    """Seed: env i of the vector is reset with seed + i."""
    reward: str | None = None
    """Reward spec, e.g. sparse_success, 'success_bonus(bonus=5)+time_penalty', or my_module:my_fn."""
    max_episode_steps: int | None = None
    """Episode length limit (default: the task's own; Meta-World: 200)."""
    vectorization: str = "sync"
    """sync (fastest on few cores) or async (one subprocess per env)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.envs < 1:
            raise ConfigError(f"--envs ({self.envs}) must be >= 1")
        if self.vectorization not in ("sync", "async"):
            raise ConfigError(f"--vectorization {self.vectorization!r}: choose sync or async")

    def make_env(self, render_mode: str | None = None) -> gym.Env:
        """One task env with the reward wrappers applied."""
        return resolve_reward(self.reward)(make(self.task, self.max_episode_steps, render_mode))

    def make_chunked(
        self,
        horizons: Horizons | tuple[int, int, int],
        gamma: float = 1.0,
        record_steps: bool = False,
        render_frames: bool = False,
    ) -> ChunkedEnv:
        """One :class:`ChunkedEnv` of the task for a policy's horizons (or an
        ``(obs_horizon, pred_horizon, action_horizon)`` tuple); ``render_frames`` renders
        offscreen into ``info["frame"]``."""
        env = self.make_env(render_mode="rgb_array" if render_frames else None)
        return ChunkedEnv(env, *horizons_of(horizons), gamma, record_steps, render_frames)

    def make_vector(
        self,
        obs_horizon: int,
        pred_horizon: int,
        action_horizon: int,
        gamma: float = 1.0,
        record_steps: bool = False,
        render_frames: bool = False,
    ) -> gym.vector.VectorEnv:
        resolve_reward(self.reward)  # fail on a bad spec before any env starts
        if self.vectorization == "async":
            self.make_env().close()  # a bad task id fails here, not as a subprocess error
        return make_vector_env(
            partial(self.make_env, render_mode="rgb_array" if render_frames else None),
            self.envs,
            obs_horizon,
            pred_horizon,
            action_horizon,
            gamma,
            record_steps,
            self.vectorization,
            render_frames,
        )
