"""The residual's environment: the frozen base runs inside, the agent outputs the correction.

A vector-env wrapper rather than a per-env one, so the base is called once per vector step for
all the envs that need a new chunk (the first step of an episode, or the end of the previous
chunk), never once per env::

    agent ──r in [-1, 1]^(h x A)──► ResidualVecEnv ──executed = clip(a_base + scale·r·half)──► envs
            ◄── [obs history, a_base] (normalised) ──┘      (each env: ChunkedEnv(To, h, h) of the task)

``h`` is 1 for the per-step form and the base's ``action_horizon`` for the per-chunk form. Any
SB3 algorithm (SAC, TD3, PPO) trains on it unchanged. Each env draws the base's noise from its
own generator (:func:`noise_rng`), so what env ``i`` executes does not depend on the other envs;
the chunk a truncated episode's last observation gets (for bootstrapping) comes from a second
generator, so it does not shift the executed noise either. Generators, chunks and positions are
checkpoint state (``get_vec_state`` / ``set_vec_state``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from dpft.base_policies.policy import Policy
from dpft.finetune.residual.policy import Features


def noise_rng(seed: int, env_index: int, stream: int = 0) -> np.random.Generator:
    """The generator of the base noise of env ``env_index`` (stream 0: executed chunks,
    stream 1: chunks for terminal observations)."""
    return np.random.default_rng([seed, env_index, stream, 0x5E5])


class ResidualVecEnv(VecEnvWrapper):
    def __init__(
        self,
        venv: VecEnv,
        base: Policy,
        form: str,
        scale: float,
        features: Features,
        seed: int = 0,
    ) -> None:
        self.base, self.form, self.scale = base, form, float(scale)
        self.features = features.to(base.device)
        self.k, self.d = base.action_horizon, base.action_dim
        self.h = 1 if form == "step" else self.k
        inner = venv.observation_space.shape  # (obs_horizon, obs_dim)
        n_in = int(np.prod(inner)) + self.h * self.d
        obs_space = spaces.Box(-np.inf, np.inf, (n_in,), np.float32)
        act_space = spaces.Box(-1.0, 1.0, (self.h * self.d,), np.float32)
        super().__init__(venv, obs_space, act_space)
        self.low = venv.action_space.low[0].astype(np.float32)
        self.high = venv.action_space.high[0].astype(np.float32)
        self._rngs = [noise_rng(seed, i) for i in range(self.num_envs)]
        self._term_rngs = [noise_rng(seed, i, 1) for i in range(self.num_envs)]
        self._chunks = np.zeros((self.num_envs, self.k, self.d), np.float32)
        self._pos = np.zeros(self.num_envs, np.int64)
        self.reset_stats()

    # ----- the base ----------------------------------------------------------------------
    def _base_chunks(self, obs: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
        """One base call for these observation histories; row j's noise from ``rngs[j]``."""
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.base.device)
        noise = None
        if not self.base.chooses_noise:
            shape = self.base.noise_shape
            drawn = np.stack([g.standard_normal(shape, dtype=np.float32) for g in rngs])
            noise = torch.as_tensor(drawn, device=self.base.device)
        return self.base.predict_chunk(x, noise)[:, : self.k].cpu().numpy()

    def _current(self) -> np.ndarray:
        """The base actions the residual corrects now: ``[N, h, A]``."""
        if self.form == "chunk":
            return self._chunks
        return self._chunks[np.arange(self.num_envs), self._pos][:, None]

    @torch.no_grad()
    def _observe(self, obs: np.ndarray, base_actions: np.ndarray) -> np.ndarray:
        dev = self.base.device
        x = self.features(torch.as_tensor(obs, device=dev), torch.as_tensor(base_actions, device=dev))
        return x.cpu().numpy()

    # ----- VecEnv --------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        self._chunks[:] = self._base_chunks(obs, self._rngs)
        self._pos[:] = 0
        return self._observe(obs, self._current())

    def step_async(self, actions: np.ndarray) -> None:
        r = np.clip(np.asarray(actions, np.float32), -1.0, 1.0).reshape(self.num_envs, self.h, self.d)
        a_base = self._current()
        raw = a_base + self.scale * r * (self.high - self.low) / 2
        executed = np.clip(raw, self.low, self.high)
        self._abs_r += float(np.abs(r).mean())
        self._clipped += float((raw != executed).mean())
        self._moved += float(np.linalg.norm(executed - a_base, axis=-1).mean())
        self._n += 1
        self.venv.step_async(executed)

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        self._pos += self.h
        need = dones | (self._pos >= self.k)
        # A truncated episode's last observation is bootstrapped from, so it needs its own base
        # action: the rest of the running chunk, or (chunk finished) a new chunk for it. After a
        # termination SB3 never looks at it (no bootstrap), so no base call is spent there.
        ended = np.flatnonzero(dones)
        truncated = {i for i in ended if infos[i].get("TimeLimit.truncated", False)}
        term_new = [i for i in truncated if self.form == "chunk" or self._pos[i] >= self.k]
        term_obs = {i: infos[i]["terminal_observation"] for i in ended}
        rngs = [self._rngs[i] for i in np.flatnonzero(need)] + [self._term_rngs[i] for i in term_new]
        rows = np.concatenate([obs[need], np.stack([term_obs[i] for i in term_new])]) if term_new else obs[need]
        chunks = self._base_chunks(rows, rngs) if rngs else np.zeros((0, self.k, self.d), np.float32)
        fresh, for_term = chunks[: need.sum()], dict(zip(term_new, chunks[need.sum() :]))
        for i in ended:
            if i in for_term:
                a = for_term[i] if self.form == "chunk" else for_term[i][:1]
            elif i not in truncated:
                a = np.zeros((self.h, self.d), np.float32)  # terminated: a placeholder SB3 ignores
            else:
                a = self._chunks[i, self._pos[i]][None]
            infos[i]["terminal_observation"] = self._observe(term_obs[i][None], a[None])[0]
        self._chunks[need] = fresh
        self._pos[need] = 0
        return self._observe(obs, self._current()), rewards, dones, infos

    # ----- statistics for TensorBoard ------------------------------------------------------------
    def reset_stats(self) -> None:
        self._abs_r = self._clipped = self._moved = 0.0
        self._n = 0

    def pop_stats(self) -> dict[str, float]:
        """Means since the last call: |r|, the share of action coordinates clipped at the bounds,
        and the distance between the base's and the executed action."""
        if self._n == 0:
            return {}
        n = self._n
        out = {
            "residual/abs_r": self._abs_r / n,
            "residual/clipped": self._clipped / n,
            "residual/moved": self._moved / n,
        }
        self.reset_stats()
        return out

    # ----- checkpoint state -----------------------------------------------------------------
    def get_vec_state(self) -> dict[str, Any]:
        return {
            "chunks": self._chunks.copy(),
            "pos": self._pos.copy(),
            "rngs": [g.bit_generator.state for g in self._rngs],
            "term_rngs": [g.bit_generator.state for g in self._term_rngs],
        }

    def set_vec_state(self, state: dict[str, Any], obs: np.ndarray) -> np.ndarray:
        self._chunks = np.asarray(state["chunks"], np.float32).copy()
        self._pos = np.asarray(state["pos"], np.int64).copy()
        for g, s in zip(self._rngs + self._term_rngs, state["rngs"] + state["term_rngs"]):
            g.bit_generator.state = s
        return self._observe(obs, self._current())
