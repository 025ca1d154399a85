"""DSRL's environment: the action is the frozen base policy's initial noise.

The base policy is a black box ``(observation history, noise) -> action chunk``; this wrapper
denoises the agent's noise into a chunk and executes it through :class:`ChunkedEnv`. Any
stable-baselines3 algorithm can then train on top, without gradients through the base.

    agent ──w (flattened noise, |w_i| <= action_magnitude)──► NoiseActionEnv
                                                              │ chunk = base.predict_chunk(obs_hist, w)
                                                              ▼
                                                          ChunkedEnv ──► task
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper

from dpft.base_policies.policy import Policy
from dpft.envs.chunking import ChunkedEnv


class NoiseActionEnv(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Observation: the flattened observation history. Action: the flattened initial noise,
    bounded by ``action_magnitude``. ``info["executed_chunk"]`` holds the actions that ran
    (``action_horizon`` rows, zero-padded if the episode ended inside the chunk) and
    ``info["steps"]`` how many, for an action-space critic and per-step discounting.

    With ``distill_samples = M > 0`` the same base call also denoises M extra noises
    w ~ N(0, I) (clipped to the bound) for the current observation and returns them as
    ``info["distill_noise"]`` (M, noise_dim) and ``info["distill_chunk"]`` (M, executed
    rows flattened). DSRL-NA distils its noise critic on these pairs, so its gradient steps
    never run the base for distillation: a batch of 1 + M costs about what a batch of 1 does
    (8.6 ms vs 11 ms for 1 vs 8 on the shipped MLP policies here). With ``report_success``
    an episode's end sets ``info["is_success"]``, which SB3 logs as ``rollout/success_rate``."""

    def __init__(
        self,
        env: ChunkedEnv,
        base: Policy,
        action_magnitude: float = 1.5,
        distill_samples: int = 0,
        report_success: bool = False,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self,
            base=base,
            action_magnitude=action_magnitude,
            distill_samples=distill_samples,
            report_success=report_success,
        )
        gym.Wrapper.__init__(self, env)
        self.base = base
        self.action_magnitude = action_magnitude
        self.distill_samples = distill_samples
        self.report_success = report_success
        self._rng = np.random.default_rng()
        self.noise_shape = base.noise_shape
        obs_space = env.observation_space
        self.observation_space = spaces.Box(obs_space.low.reshape(-1), obs_space.high.reshape(-1), dtype=np.float32)
        n = int(np.prod(self.noise_shape))
        self.action_space = spaces.Box(-action_magnitude, action_magnitude, (n,), dtype=np.float32)
        self._obs: np.ndarray | None = None
        self.batch_width = 1 + distill_samples
        """Rows of every base call: :class:`NoiseVecEnv` sets it to all its envs' rows, and a step
        taken alone (an episode replayed on resume) pads to it, so its chunks round the same way."""
        self._pending: tuple[np.ndarray, np.ndarray] | None = None

    def reset(self, *, seed: int | None = None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng([seed, 1])  # distillation noise never touches the task's RNG
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = obs
        return obs.reshape(-1), info

    def chunks_for(self, obs_hist: np.ndarray, noises: np.ndarray) -> np.ndarray:
        """Denoise several noises for one observation history in a single base call (of
        ``batch_width`` rows, padded with copies)."""
        w = torch.as_tensor(noises, dtype=torch.float32, device=self.base.device).reshape(-1, *self.noise_shape)
        n = w.shape[0]
        if n < self.batch_width:
            w = torch.cat([w, w[:1].expand(self.batch_width - n, *w.shape[1:])])
        obs = torch.as_tensor(obs_hist, device=self.base.device)[None].expand(w.shape[0], *obs_hist.shape)
        return self.base.predict_chunk(obs, w)[:n].cpu().numpy()

    def noises_for(self, action) -> np.ndarray:
        """``[1 + M, noise_dim]``: the agent's noise clipped to the bound, then M distillation noises."""
        m = self.action_magnitude
        noise = np.clip(np.asarray(action, np.float32).reshape(1, -1), -m, m)
        if self.distill_samples:
            extra = self._rng.standard_normal((self.distill_samples, noise.shape[1]), dtype=np.float32)
            noise = np.concatenate([noise, np.clip(extra, -m, m)])
        return noise

    def set_pending(self, noise: np.ndarray, chunks: np.ndarray) -> None:
        """The next step's noises and their chunks, denoised by :class:`NoiseVecEnv` with the other envs'."""
        self._pending = (noise, chunks)

    def step(self, action):
        if self._pending is not None:
            (noise, chunks), self._pending = self._pending, None
        else:
            noise = self.noises_for(action)
            chunks = self.chunks_for(self._obs, noise)
        chunk = chunks[0]
        obs, reward, terminated, truncated, info = self.env.step(chunk)
        self._obs = obs
        k = self.env.action_horizon
        executed = np.zeros((k, chunk.shape[-1]), np.float32)
        executed[: info["steps"]] = chunk[: info["steps"]]
        info["executed_chunk"] = executed
        if self.distill_samples:
            info["distill_noise"] = noise[1:]
            info["distill_chunk"] = chunks[1:, :k].reshape(self.distill_samples, -1)
        if self.report_success and "episode" in info:
            info["is_success"] = info["episode"]["success"]  # SB3 logs rollout/success_rate from this
        return obs.reshape(-1), reward, terminated, truncated, info


def noise_env_of(env: gym.Env) -> NoiseActionEnv:
    """The :class:`NoiseActionEnv` inside the wrappers around ``env`` (Monitor, episode replay)."""
    while not isinstance(env, NoiseActionEnv):
        env = env.env
    return env


class NoiseVecEnv(VecEnvWrapper):
    """One base call per vector step for all envs: every env's chosen noise and distillation
    noises are denoised together (``E * (1 + M)`` rows), then each env executes its own chunk.

    Each env still draws its distillation noise from its own generator, so what env ``i`` runs
    does not depend on the other envs; every base call has the same ``E * (1 + M)`` rows, the
    replays of a resume included (:attr:`NoiseActionEnv.batch_width`)."""

    def __init__(self, venv: DummyVecEnv) -> None:
        super().__init__(venv)
        self.noise_envs = [noise_env_of(env) for env in venv.envs]
        width = sum(env.batch_width for env in self.noise_envs)
        for env in self.noise_envs:
            env.batch_width = width
        self.base = self.noise_envs[0].base

    def step_async(self, actions: np.ndarray) -> None:
        noises = [env.noises_for(a) for env, a in zip(self.noise_envs, actions)]
        device = self.base.device
        obs = torch.cat(
            [
                torch.as_tensor(env._obs, device=device)[None].expand(len(w), *env._obs.shape)
                for env, w in zip(self.noise_envs, noises)
            ]
        )
        w = torch.as_tensor(np.concatenate(noises), device=device).reshape(-1, *self.noise_envs[0].noise_shape)
        chunks = self.base.predict_chunk(obs, w).cpu().numpy()
        start = 0
        for env, noise in zip(self.noise_envs, noises):
            env.set_pending(noise, chunks[start : start + len(noise)])
            start += len(noise)
        self.venv.step_async(actions)

    def step_wait(self):
        return self.venv.step_wait()

    def reset(self):
        return self.venv.reset()
