"""Tasks, the common wrapper and the rollout loop, on real simulators."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from conftest import tiny_policy
from gymnasium.utils.env_checker import check_env

from dpft.base_policies.infra.errors import TaskError
from dpft.envs.chunking import ChunkedEnv, check_policy_fits, make_vector_env
from dpft.envs.tasks import make, parse_task_id
from dpft.finetune.common.rollout import run_episodes


def test_task_id_parser():
    assert (parse_task_id("gym:Hopper-v5").family, parse_task_id("gym:Hopper-v5").name) == ("gym", "Hopper-v5")
    assert parse_task_id("metaworld:push-v3").family == "metaworld"
    user = parse_task_id("my_pkg.envs:MyEnv-v0")  # unknown family: a gymnasium "module:id"
    assert (user.family, user.name) == ("", "my_pkg.envs:MyEnv-v0")
    with pytest.raises(TaskError, match="no task name"):
        parse_task_id("gym:")


@pytest.mark.parametrize(
    "task, obs_dim, act_dim, has_success",
    [
        ("gym:Hopper-v5", 11, 3, False),
        ("metaworld:push-v3", 39, 4, True),
        ("robotics:FetchPush-v4", 31, 4, True),
        ("robotics:AdroitHandDoor-v1", 39, 28, True),
        ("Pendulum-v1", 3, 1, False),
    ],
)
def test_uniform_contract_and_env_checker(task, obs_dim, act_dim, has_success):
    env = make(task)
    assert env.observation_space.shape == (obs_dim,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (act_dim,)
    obs, _ = env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.dtype == np.float32 and isinstance(terminated, bool) and isinstance(truncated, bool)
    assert ("success" in info) == has_success and (not has_success or isinstance(info["success"], bool))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped if task == "Pendulum-v1" else env, skip_render_check=True)
        check_env(ChunkedEnv(make(task), 2, 4, 2), skip_render_check=True)


def test_metaworld_random_starts_are_seeded():
    env = make("metaworld:push-v3")
    first = [env.reset(seed=3)[0][4:7]] + [env.reset()[0][4:7] for _ in range(4)]
    again = [env.reset(seed=3)[0][4:7]] + [env.reset()[0][4:7] for _ in range(4)]
    np.testing.assert_array_equal(first, again)
    assert len({tuple(np.round(p, 4)) for p in first}) == 5, "every reset must draw a new object position"


@pytest.mark.parametrize("bad", ["metaworld:pushh-v3", "gym:Hopperz-v5", "nosuchmodule:Thing-v0", "CartPole-v1"])
def test_bad_task_ids_are_clear(bad):
    with pytest.raises(TaskError) as e:
        make(bad)
    assert "Traceback" not in str(e.value)


class Counter(gym.Env):
    """obs = step count; reward = 1 per step; success from step 3; terminates at step ``end``."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self, end: int = 100):
        self.end = end

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 1.0, self.t >= self.end, False, {"success": self.t >= 3}


def test_chunk_execution_history_padding_and_discount():
    env = ChunkedEnv(Counter(), obs_horizon=3, pred_horizon=4, action_horizon=2, gamma=0.5)
    obs, _ = env.reset(seed=0)
    assert obs[:, 0].tolist() == [0, 0, 0]  # padded with the first observation
    obs, reward, terminated, _, info = env.step(np.zeros((4, 1)))
    assert obs[:, 0].tolist() == [0, 1, 2] and reward == 1.5 and info["steps"] == 2 and not info["success"]
    obs, _, _, _, info = env.step(np.zeros((4, 1)))
    assert obs[:, 0].tolist() == [2, 3, 4] and info["success"]


def test_chunk_stops_early_at_termination_with_episode_stats():
    env = ChunkedEnv(Counter(end=5), obs_horizon=1, pred_horizon=4, action_horizon=4, record_steps=True)
    env.reset(seed=0)
    env.step(np.zeros((4, 1)))
    _, reward, terminated, _, info = env.step(np.zeros((4, 1)))
    assert terminated and info["steps"] == 1 and reward == 1.0
    assert info["episode"] == {"return": 5.0, "length": 5, "success": True, "success_step": 3}
    assert info["step_data"].obs[:, 0].tolist() == [4]  # the observation the executed action saw


def test_vector_rollout_batches_policy_calls_and_is_reproducible():
    calls = []

    def chunk_fn(obs):
        calls.append(obs.shape[0])
        return np.zeros((obs.shape[0], 4, 1), np.float32)

    def venv():
        return make_vector_env(lambda: Counter(end=7), 3, 2, 4, 4, record_steps=True)

    results = run_episodes(chunk_fn, venv(), num_episodes=5, seed=0, record_steps=True)
    assert set(calls) == {3}, "the policy must be called once per batch of envs"
    assert [r.env_index for r in results] == [0, 0, 1, 1, 2]
    assert all(r.length == 7 and r.episode_return == 7 and r.success_step == 3 for r in results)
    assert all(len(r.steps) == 7 and r.steps.obs[:, 0].tolist() == list(range(7)) for r in results)


def test_policy_task_mismatch_is_clear():
    env = make("gym:Hopper-v5")
    with pytest.raises(TaskError, match="expects observations of size 5 .* but task 'gym:Hopper-v5' has 11 and 3"):
        check_policy_fits(tiny_policy(obs_dim=5, action_dim=3), env, "gym:Hopper-v5")


def test_async_vectorization_matches_sync():
    from dpft.envs.config import EnvConfig

    def random_chunks(obs):
        return np.tile(np.linspace(-0.5, 0.5, 3, dtype=np.float32), (obs.shape[0], 4, 1))

    results = {}
    for mode in ("sync", "async"):
        venv = EnvConfig(task="gym:Hopper-v5", envs=2, vectorization=mode, max_episode_steps=40).make_vector(1, 4, 4)
        results[mode] = [(r.length, round(r.episode_return, 5)) for r in run_episodes(random_chunks, venv, 4, seed=3)]
        venv.close()
    assert results["sync"] == results["async"]


def test_env_config_makes_a_chunked_env_for_a_policy():
    from dpft.envs.config import EnvConfig

    cfg = EnvConfig(task="gym:Hopper-v5")
    env = cfg.make_chunked(tiny_policy(obs_dim=11, action_dim=3, obs_horizon=2, pred_horizon=8, action_horizon=4))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 11) and env.action_space.shape == (8, 3) and env.action_horizon == 4
    assert cfg.make_chunked((1, 4, 2)).observation_space.shape == (1, 11)
    with pytest.raises(TaskError, match="render_frames needs an env made with render_mode='rgb_array'"):
        ChunkedEnv(Counter(), render_frames=True)


def test_a_shifted_task_scales_and_offsets_every_action_within_the_bounds():
    """``+action_gain`` / ``+action_offset``: the same episode as the plain task given the shifted
    action, clipped to the bounds; success and the contract unchanged."""
    plain, shifted = make("metaworld:push-v3"), make("metaworld:push-v3+action_gain=0.5+action_offset=0.1")
    plain.reset(seed=3)
    shifted.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.uniform(-1, 1, 4).astype(np.float32)
        o1, r1, *_ = plain.step(np.clip(0.5 * a + 0.1, -1, 1))
        o2, r2, *_, info = shifted.step(a)
        np.testing.assert_allclose(o1, o2, atol=1e-6)
        assert r1 == pytest.approx(r2) and "success" in info
    from dpft.envs.experts import get_expert
    from dpft.envs.tasks import task_defines_success

    assert task_defines_success("metaworld:push-v3+action_gain=0.7") and not task_defines_success(
        "gym:Hopper-v5+action_offset=0.1"
    )
    assert get_expert("metaworld:push-v3+action_gain=0.7") is not None  # the plain task's expert, unaware of the shift


@pytest.mark.parametrize(
    ("bad", "says"),
    [("metaworld:push-v3+gain=2", "unknown modifier"), ("metaworld:push-v3+action_gain=0", "positive"),
     ("metaworld:push-v3+action_offset=x", "must be a number")],
)  # fmt: skip
def test_a_bad_shift_suffix_is_one_clear_error(bad, says):
    with pytest.raises(TaskError, match=says):
        make(bad)
