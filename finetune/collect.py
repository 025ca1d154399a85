"""``dpft collect``: demonstrations from a task's expert, in the native HDF5 format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpft.base_policies.data import write_robomimic_hdf5
from dpft.base_policies.errors import ConfigError, DpftError
from dpft.base_policies.paths import check_output_file
from dpft.envs.config import EnvConfig
from dpft.envs.experts import get_expert
from dpft.finetune.rollout import EpisodeResult, run_episodes


@dataclass
class CollectConfig(EnvConfig):
    """Roll out the task's expert and write demonstrations (robomimic-layout HDF5)."""

    episodes: int = 50
    """Number of episodes to write."""
    out: Path = Path("demos.hdf5")
    """Output file."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to the expert's actions (the noisy actions are executed and recorded)."""
    success_only: bool = False
    """Keep only successful episodes (collects until --episodes successes, at most 10x attempts)."""
    progress: bool = True
    """Show a progress bar."""
    overwrite: bool = False
    """Replace --out if it exists (otherwise an existing file is an error, checked before any rollout)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.episodes < 1 or self.action_noise < 0:
            raise ConfigError("--episodes must be >= 1 and --action-noise >= 0")


def collect(cfg: CollectConfig) -> list[EpisodeResult]:
    check_output_file(cfg.out, cfg.overwrite, "--out", (".hdf5", ".h5"))  # before any rollout
    expert = get_expert(cfg.task)
    rng = np.random.default_rng(cfg.seed)
    venv = cfg.make_vector(1, 1, 1, record_steps=True)
    low, high = venv.single_action_space.low[0], venv.single_action_space.high[0]

    def chunk_fn(obs: np.ndarray) -> np.ndarray:
        actions = expert(obs[:, 0])
        if cfg.action_noise > 0:
            actions = actions + rng.normal(0, cfg.action_noise, actions.shape)
        return np.clip(actions, low, high).astype(np.float32)[:, None]

    kept: list[EpisodeResult] = []
    attempts, round_seed = 0, cfg.seed
    try:
        while len(kept) < cfg.episodes:
            want = cfg.episodes - len(kept)
            results = run_episodes(chunk_fn, venv, want, seed=round_seed, progress=cfg.progress, record_steps=True)
            attempts += len(results)
            round_seed += 100_003  # next round: fresh start states
            kept += [r for r in results if r.success or not cfg.success_only][:want]
            if attempts >= 10 * cfg.episodes and len(kept) < cfg.episodes:
                raise DpftError(
                    f"only {len(kept)} of {attempts} expert episodes succeeded; lower --episodes, "
                    "lower --action-noise or drop --success-only"
                )
    finally:
        venv.close()
    env_args = {
        "task": cfg.task,
        "max_episode_steps": cfg.max_episode_steps,
        "reward": cfg.reward,
        "action_low": low.tolist(),
        "action_high": high.tolist(),
        "collector": "expert",
        "action_noise": cfg.action_noise,
        "seed": cfg.seed,
        "success_only": cfg.success_only,
    }
    episodes = [r.steps for r in kept]
    for i, ep in enumerate(episodes):
        ep.name = f"demo_{i}"
    write_robomimic_hdf5(cfg.out, episodes, env_args)
    rate = sum(r.success for r in kept) / len(kept)
    print(
        f"wrote {len(kept)} episodes ({sum(len(e) for e in episodes)} steps, success {rate:.2f}; "
        f"{attempts} attempted) to {cfg.out}"
    )
    return kept
