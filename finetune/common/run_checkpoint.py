"""Atomic checkpoints of SB3 algorithms, off-policy (with the replay buffer) and on-policy
(PPO: no buffer; a checkpoint is taken between rollouts, when the rollout buffer is empty).

A checkpoint folder holds everything ``--resume`` needs to continue *exactly*::

    model.zip          SB3's own file: weights, optimisers, counters, the last observation
    replay.pkl         off-policy algorithms only: the replay buffer
    state.json/.safetensors
                       env steps, wall-clock seconds, torch/numpy/Python RNG states, the action
                       space's RNG, and every env's episode seed and actions so far (see
                       :class:`dpft.envs.episode_replay.ReplayableEpisodes`), the state of every
                       vector-env wrapper that has one, plus a method's extras

A vector-env wrapper with state of its own (a residual's current base chunks) has
``get_vec_state() -> dict`` and ``set_vec_state(state, obs) -> obs``: on resume the envs are
replayed first, then each wrapper, innermost first, restores its state and turns the inner
observations into its own.

SB3's files pickle some objects: they are training state, read only by ``--resume``, never a
policy artifact. Checkpoints written before env states were kept (``sac.zip``) still load;
their envs start new episodes, as they always did.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import pickle
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from dpft.base_policies.infra.errors import CheckpointError
from dpft.base_policies.infra.files import interpreting
from dpft.base_policies.infra.state_io import RESTART, atomic_dir, load_state, rng_state, save_state, set_rng_state

MODEL_FILES = ("model.zip", "sac.zip")  # sac.zip: checkpoints of DSRL runs before the shared run parts
# What SB3 (zipfile, pickle, torch.load) raises on a truncated, damaged or mismatched file.
DAMAGED = (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError, ValueError, OSError)


def save_sb3_checkpoint(model: BaseAlgorithm, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``folder`` atomically (a kill at any moment leaves the previous complete copy)."""
    env = model.get_env()
    envs = env.env_method("get_state") if _replayable(env) else None
    state = {
        "num_timesteps": model.num_timesteps,
        "rng": rng_state(),
        "action_space_rng": model.action_space.np_random.bit_generator.state,
        "envs": envs if envs is not None and None not in envs else None,
        "vec": [layer.get_vec_state() for layer in _stateful_layers(env)],
        **(extra or {}),
    }
    with atomic_dir(folder) as tmp:
        model.save(tmp / "model.zip")
        if isinstance(model, OffPolicyAlgorithm):
            model.save_replay_buffer(tmp / "replay.pkl")
        save_state(tmp, state)


class _PreNamespaceNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """SB3's files pickle classes by module name, and checkpoints written before dpft became one
    namespace name ``finetune.dsrl.networks``; while loading, such names resolve to ``dpft.*``."""

    OLD = ("base_policies", "envs", "finetune")

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.OLD:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"dpft.{spec.name}")

    def exec_module(self, module) -> None:
        return None


@contextlib.contextmanager
def pre_namespace_names():
    finder = _PreNamespaceNames()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n.split(".")[0] in finder.OLD]:
            if sys.modules[name].__name__.startswith("dpft."):
                del sys.modules[name]


def load_sb3_checkpoint(
    cls: type[BaseAlgorithm], folder: Path, env: VecEnv, **kwargs: Any
) -> tuple[BaseAlgorithm, dict]:
    """The model with its buffer, RNG and env states restored, and the saved state dict; or one
    clear :class:`CheckpointError` when the files are damaged."""
    zip_file = next((folder / f for f in MODEL_FILES if (folder / f).exists()), folder / MODEL_FILES[0])
    state = load_state(folder)
    with interpreting(folder / "state.json", "training state", CheckpointError, RESTART):
        return _restore(cls, folder, zip_file, state, env, **kwargs)


def _restore(
    cls: type[BaseAlgorithm], folder: Path, zip_file: Path, state: dict, env: VecEnv, **kwargs: Any
) -> tuple[BaseAlgorithm, dict]:
    state["wall_s"] = float(state.get("wall_s", 0.0))
    exact = state.get("envs") is not None and _replayable(env)
    try:
        with pre_namespace_names(), warnings.catch_warnings():
            # SB3 warns that n_steps is "ignored" on every load of an n-step model: the saved
            # replay_buffer_kwargs (n_steps, gamma) and the unpickled NStepReplayBuffer keep it.
            warnings.filterwarnings("ignore", message=r"`n_steps=\d+` is ignored because a custom")
            model = cls.load(zip_file, env=env, force_reset=not exact, **kwargs)
            if isinstance(model, OffPolicyAlgorithm):
                model.load_replay_buffer(folder / "replay.pkl")
    except DAMAGED as e:
        raise CheckpointError(
            f"cannot resume from {folder} ({type(e).__name__}: {e}); the checkpoint is damaged -- "
            "start a new run with another --out"
        ) from None
    if exact:
        obs = np.stack([env.env_method("set_state", s, indices=[i])[0] for i, s in enumerate(state["envs"])])
        layers = _stateful_layers(env)
        if len(state.get("vec", [])) != len(layers):
            raise CheckpointError(
                f"{folder} was written by a run with other vector-env wrappers; it cannot resume here"
            )
        for layer, layer_state in zip(reversed(layers), reversed(state.get("vec", []))):
            obs = layer.set_vec_state(layer_state, obs)
        if model._last_obs is not None and not np.array_equal(obs, model._last_obs):
            warnings.warn(
                "replaying the envs did not reproduce the checkpointed observations (a non-deterministic task or "
                "another machine); the resumed run continues from the replayed state",
                stacklevel=2,
            )
        model._last_obs = obs
    set_rng_state(state["rng"])
    if "action_space_rng" in state:
        model.action_space.np_random.bit_generator.state = state["action_space_rng"]
    return model, state


def _stateful_layers(env: VecEnv | None) -> list[VecEnvWrapper]:
    """The wrappers of ``env`` (outermost first) that keep state of their own. Looked up on the
    class: a VecEnvWrapper forwards unknown attributes to the env it wraps."""
    layers = []
    while isinstance(env, VecEnvWrapper):
        if hasattr(type(env), "get_vec_state"):
            layers.append(env)
        env = env.venv
    return layers


def _replayable(env: VecEnv) -> bool:
    return env is not None and env.has_attr("get_state")
