"""The rollout loop's per-decision extras and frames, and videos made through it."""

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from conftest import tiny_policy

from dpft.base_policies.infra.errors import DpftError
from dpft.envs.config import EnvConfig
from dpft.finetune.common.rollout import policy_chunk_fn, run_episodes
from dpft.finetune.common.video import record_video, render_episodes

K = 3  # action horizon


class Tick(gym.Env):
    """obs = (t, episode length); the length is drawn at reset (5..9) so envs finish at different
    steps; reward = the action; the rendered frame is filled with t."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}
    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.end = 0, int(self.np_random.integers(5, 10))
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(action[0]), self.t >= self.end, False, {"success": self.t >= 3}

    def _obs(self):
        return np.array([self.t, self.end], np.float32)

    def render(self):
        return np.full((8, 8, 3), self.t, np.uint8)


class NoRenderer(Tick):
    def render(self):
        raise gym.error.DependencyNotInstalled("the renderer is not installed")


gym.register("RolloutTick-v0", entry_point=Tick)
gym.register("RolloutNoRenderer-v0", entry_point=NoRenderer)


def tick_policy():
    return tiny_policy(obs_dim=2, action_dim=1, obs_horizon=2, pred_horizon=4, action_horizon=K)


def tick_venv(envs: int, **kw) -> gym.vector.VectorEnv:
    return EnvConfig(task="RolloutTick-v0", envs=envs).make_vector(2, 4, K, **kw)


def test_recorded_noise_reproduces_the_executed_actions():
    policy = tick_policy()
    noisy = policy_chunk_fn(policy, torch.Generator().manual_seed(0), return_noise=True)

    def chunk_fn(obs):
        chunks, extras = noisy(obs)
        return chunks, {**extras, "obs": obs}

    results = run_episodes(chunk_fn, tick_venv(3, record_steps=True), 7, seed=0, record_steps=True)
    assert len({r.length for r in results}) > 1, "envs must finish at different steps for this test"
    for r in results:
        decisions = -(-r.length // K)
        assert r.decisions["noise"].shape == (decisions, 4, 1) and r.decisions["obs"].shape == (decisions, 2, 2)
        replay = policy.predict_chunk(torch.from_numpy(r.decisions["obs"]), torch.from_numpy(r.decisions["noise"]))
        executed = replay[:, :K].reshape(-1, 1)[: r.length].numpy()
        np.testing.assert_allclose(executed, r.steps.actions, atol=1e-5)
        assert r.episode_return == pytest.approx(float(executed.sum()), abs=1e-4)

    # Drawing the noise outside the policy changes nothing: same generator, same episodes.
    plain = run_episodes(
        policy_chunk_fn(policy, torch.Generator().manual_seed(0)), tick_venv(3, record_steps=True), 7, record_steps=True
    )
    assert all(np.array_equal(a.steps.actions, b.steps.actions) for a, b in zip(plain, results))


def test_zero_noise_is_returned_as_zeros():
    results = run_episodes(policy_chunk_fn(tick_policy(), zero_noise=True, return_noise=True), tick_venv(2), 2)
    assert all(r.decisions["noise"].shape[1:] == (4, 1) and not r.decisions["noise"].any() for r in results)


def test_frames_are_the_reset_frame_then_one_per_chunk():
    results = run_episodes(lambda obs: np.zeros((len(obs), 4, 1), np.float32), tick_venv(2, render_frames=True), 5)
    assert len(results) == 5 and len({r.length for r in results}) > 1
    for r in results:  # the frame shows the step count: 0 at reset, then after each chunk
        assert r.frames[:, 0, 0, 0].tolist() == [*range(0, r.length, K), r.length]


def test_video_of_two_episodes_has_a_frame_per_chunk(tmp_path):
    env = Tick()
    lengths = [env.reset(seed=5)[0][1], env.reset()[0][1]]  # the first two episodes of env 0
    expected = sum(1 + -(-int(n) // K) for n in lengths)
    cfg = EnvConfig(task="RolloutTick-v0", seed=5)
    assert len(render_episodes(tick_policy(), cfg, 2)) == expected
    path = record_video(tick_policy(), cfg, tmp_path / "clip.gif", episodes=2)
    assert len(imageio.mimread(path)) == expected


def test_video_reports_a_missing_renderer_but_not_a_policy_bug(tmp_path, monkeypatch):
    with pytest.raises(DpftError, match="could not render video .*DependencyNotInstalled"):
        record_video(tick_policy(), EnvConfig(task="RolloutNoRenderer-v0"), tmp_path / "a.gif")
    policy = tick_policy()

    def buggy(*args, **kwargs):
        raise AttributeError("a bug in the policy")

    monkeypatch.setattr(policy, "predict_chunk", buggy)
    with pytest.raises(AttributeError, match="a bug in the policy"):
        record_video(policy, EnvConfig(task="RolloutTick-v0"), tmp_path / "b.gif")


@pytest.mark.slow
@pytest.mark.parametrize("backends, works", [("glfw,egl", True), ("glfw,nope", False)])
def test_video_falls_back_to_the_next_gl_backend(tmp_path, backends, works):
    """When the first GL back end cannot render (glfw has no display here), the next one is tried
    in a fresh process; when none works, one line names each back end and its error."""
    import os
    import subprocess
    import sys

    from conftest import tiny_policy

    policy = tiny_policy(obs_dim=4, action_dim=1, obs_horizon=1, pred_horizon=4, action_horizon=4)
    policy.config.task = "gym:InvertedPendulum-v5"
    policy.save(tmp_path / "p")
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    env |= {"DPFT_VIDEO_BACKENDS": backends, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "dpft.finetune", "eval", "--policy", str(tmp_path / "p"), "--episodes", "1"]
    argv += ["--envs", "1", "--video", str(tmp_path / "v.gif"), "--no-progress"]
    res = subprocess.run(argv, env=env, capture_output=True, text=True)
    if works:
        assert res.returncode == 0, res.stderr
        assert len(imageio.mimread(tmp_path / "v.gif")) >= 2
    else:
        assert res.returncode == 2
        error = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "glfw:" in error[0] and "nope:" in error[0], res.stderr
        assert not (tmp_path / "v.gif").exists()


@pytest.mark.slow
def test_eval_video_exits_quietly_in_a_real_process(tmp_path):
    """The renderer is closed before the interpreter exits: no ``OffScreenViewer.__del__``
    traceback ("Exception ignored in ...") after a video, on a MuJoCo task, in a fresh process."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "dpft.finetune", "eval", "--policy", "shipped:metaworld-push-v3", "--episodes"]
    argv += ["1", "--envs", "1", "--video", str(tmp_path / "v.mp4"), "--video-episodes", "1", "--no-progress"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "v.mp4").stat().st_size > 0
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
