"""Offscreen videos of a policy (MP4 via imageio-ffmpeg, or GIF)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dpft.base_policies.errors import DpftError
from dpft.base_policies.policy import Policy
from dpft.envs.chunking import ChunkedEnv
from dpft.envs.config import EnvConfig


def record_video(policy: Policy, cfg: EnvConfig, path: Path, episodes: int = 2, fps: int = 30) -> Path:
    """Render ``episodes`` episodes of env 0 (one frame per executed chunk) to ``path``."""
    # Headless machines: OSMesa works without a GPU or display (Debian package libosmesa6).
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise DpftError("--video needs imageio: pip install imageio imageio-ffmpeg") from None
    env = ChunkedEnv(
        cfg.make_env(render_mode="rgb_array"),
        policy.obs_horizon,
        policy.pred_horizon,
        policy.action_horizon,
        record_steps=False,
    )
    frames = []
    gen = torch.Generator().manual_seed(cfg.seed)
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=cfg.seed + ep)
            frames.append(env.render())
            done = False
            while not done:
                chunk = policy.predict_chunk(torch.from_numpy(obs[None]), generator=gen)[0].numpy()
                obs, _, terminated, truncated, _ = env.step(chunk)
                frames.append(env.render())
                done = terminated or truncated
    except Exception as e:  # rendering back-ends fail in many ways; say what to do
        raise DpftError(
            f"could not render video ({type(e).__name__}: {e}); on a headless Linux machine install "
            "libosmesa6 and set MUJOCO_GL=osmesa"
        ) from None
    finally:
        env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    # One frame per executed chunk; play back at real time.
    imageio.mimsave(path, [np.asarray(f) for f in frames], fps=max(1, fps // policy.action_horizon))
    return path
