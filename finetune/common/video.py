"""Offscreen videos of a policy (MP4 via imageio-ffmpeg, or GIF), rolled out by :mod:`rollout`.

GL back ends: the one ``MUJOCO_GL`` names, else OSMesa (software, needs no GPU or display),
and if that fails EGL. PyOpenGL fixes its platform when it is first imported, so a second back
end is tried in a fresh process (``python -m dpft.finetune.common.video``), which renders the same
episodes and hands the frames back.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from dpft.base_policies.infra.errors import DpftError
from dpft.base_policies.policy import Policy
from dpft.envs.config import EnvConfig
from dpft.finetune.common.rollout import policy_chunk_fn, run_episodes

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


BACKENDS = ("osmesa", "egl")


class RenderBackendError(Exception):
    """The GL back end could not render (another back end may)."""


@contextmanager
def _backend(name: str):
    """Render with GL back end ``name`` (unless the user chose one); the process environment is
    restored afterwards."""
    saved = {k: os.environ.get(k) for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    os.environ.setdefault("MUJOCO_GL", name)
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
    per episode its reset frame, then one after each executed chunk. Tries the GL back ends in
    turn (see the module docstring; ``DPFT_VIDEO_BACKENDS=a,b`` changes the order, for tests)."""
    chosen = os.environ.get("MUJOCO_GL")
    order = [chosen] if chosen else os.environ.get("DPFT_VIDEO_BACKENDS", ",".join(BACKENDS)).split(",")
    errors = []
    for i, name in enumerate(order):
        try:
            if i == 0:
                return _render_here(policy, cfg, episodes, zero_noise, name)
            return _render_in_fresh_process(policy, cfg, episodes, zero_noise, name)
        except RenderBackendError as e:
            errors.append(f"{name}: {e}")
    raise DpftError(
        f"could not render video ({'; '.join(errors)}); on a headless Linux machine install libosmesa6 "
        "(OSMesa) or an EGL driver, or set MUJOCO_GL to a back end that works"
    )


def _render_here(policy: Policy, cfg: EnvConfig, episodes: int, zero_noise: bool, backend: str) -> np.ndarray:
    fn = policy_chunk_fn(policy, torch.Generator().manual_seed(cfg.seed), zero_noise=zero_noise)
    try:
        with _backend(backend):
            venv = replace(cfg, envs=1, vectorization="sync").make_vector(
                policy.obs_horizon, policy.pred_horizon, policy.action_horizon, render_frames=True
            )
            try:
                results = run_episodes(fn, venv, episodes, seed=cfg.seed)
            finally:
                venv.close()
    except Exception as e:
        if isinstance(e, gym.error.DependencyNotInstalled):  # the task has no renderer: no back end helps
            raise DpftError(f"could not render video ({type(e).__name__}: {_message(e)})") from None
        if not render_backend_failed(e):
            raise
        raise RenderBackendError(f"{type(e).__name__}: {_message(e)}") from None
    return np.concatenate([r.frames for r in results])


def _render_in_fresh_process(policy: Policy, cfg: EnvConfig, episodes: int, zero_noise: bool, backend: str):
    import json
    import subprocess
    import sys
    import tempfile
    from dataclasses import fields

    from dpft.base_policies.infra.records import to_dict

    with tempfile.TemporaryDirectory() as tmp:
        policy.save(Path(tmp) / "policy")
        env_cfg = {f.name: getattr(cfg, f.name) for f in fields(EnvConfig)}
        (Path(tmp) / "cfg.json").write_text(json.dumps(to_dict(EnvConfig(**env_cfg))))
        argv = [sys.executable, "-m", "dpft.finetune.common.video", tmp, str(episodes), str(int(zero_noise)), backend]
        env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
        res = subprocess.run(argv, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            lines = res.stderr.strip().splitlines()
            raise RenderBackendError(lines[-1] if lines else f"exit {res.returncode}")
        return np.load(Path(tmp) / "frames.npy")


def _worker(folder: str, episodes: str, zero_noise: str, backend: str) -> int:
    """``python -m dpft.finetune.common.video FOLDER EPISODES ZERO_NOISE BACKEND``: render in this fresh
    process and write FOLDER/frames.npy (the second back end of :func:`render_episodes`)."""
    import json
    import sys

    from dpft.base_policies import load_policy
    from dpft.base_policies.infra.records import from_dict

    policy = load_policy(Path(folder) / "policy")
    cfg = from_dict(EnvConfig, json.loads((Path(folder) / "cfg.json").read_text()))
    try:
        frames = _render_here(policy, cfg, int(episodes), bool(int(zero_noise)), backend)
    except (RenderBackendError, DpftError) as e:
        print(e, file=sys.stderr)
        return 3
    np.save(Path(folder) / "frames.npy", frames)
    return 0


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


if __name__ == "__main__":
    import sys

    sys.exit(_worker(*sys.argv[1:]))
