"""Offscreen videos of a policy (MP4 via imageio-ffmpeg, or GIF), rolled out by :mod:`rollout`."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from dpft.base_policies.errors import DpftError
from dpft.base_policies.policy import Policy
from dpft.envs.config import EnvConfig
from dpft.finetune.rollout import policy_chunk_fn, run_episodes

# Where the rendering back ends live: an error raised here is a missing or broken back end.
RENDER_MODULES = ("OpenGL", "glfw", "mujoco", "gymnasium.envs.mujoco.mujoco_rendering")


def record_video(
    policy: Policy, cfg: EnvConfig, path: Path, episodes: int = 2, fps: int = 30, zero_noise: bool = False
) -> Path:
    """Render the first ``episodes`` episodes of a 1-env rollout (one frame per executed chunk,
    played back at real time) to ``path``."""
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise DpftError("--video needs imageio: pip install imageio imageio-ffmpeg") from None
    frames = render_episodes(policy, cfg, episodes, zero_noise)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, list(frames), fps=max(1, fps // policy.action_horizon))
    return path


@contextmanager
def _headless_defaults():
    """Unless the user chose a GL back end, render with OSMesa, which works without a GPU or
    display (Debian package libosmesa6); the process environment is restored afterwards."""
    saved = {k: os.environ.get(k) for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def render_episodes(policy: Policy, cfg: EnvConfig, episodes: int, zero_noise: bool = False) -> np.ndarray:
    """Frames ``[T, height, width, 3]`` of ``episodes`` episodes on one env seeded ``cfg.seed``:
    per episode its reset frame, then one after each executed chunk."""
    fn = policy_chunk_fn(policy, torch.Generator().manual_seed(cfg.seed), zero_noise=zero_noise)
    try:
        with _headless_defaults():
            venv = replace(cfg, envs=1, vectorization="sync").make_vector(
                policy.obs_horizon, policy.pred_horizon, policy.action_horizon, render_frames=True
            )
            try:
                results = run_episodes(fn, venv, episodes, seed=cfg.seed)
            finally:
                venv.close()
    except Exception as e:
        if not render_backend_failed(e):
            raise
        raise DpftError(
            f"could not render video ({type(e).__name__}: {_message(e)}); on a headless Linux machine install "
            "libosmesa6 and set MUJOCO_GL=osmesa (or MUJOCO_GL=egl where EGL works)"
        ) from None
    return np.concatenate([r.frames for r in results])


def render_backend_failed(e: BaseException) -> bool:
    """Whether ``e`` came from a rendering back end (PyOpenGL, glfw, MuJoCo's GL contexts) or a
    renderer the task needs is not installed, rather than from the policy or the task."""
    if isinstance(e, gym.error.DependencyNotInstalled):
        return True
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    raised_in = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return any(
        name == m or name.startswith(m + ".") for name in (type(e).__module__, raised_in) for m in RENDER_MODULES
    )


def _message(e: BaseException) -> str:
    try:  # some back-end errors cannot format themselves (PyOpenGL's EGLError)
        return str(e)
    except Exception:
        return "no message"
