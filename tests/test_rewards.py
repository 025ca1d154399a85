"""Every built-in reward wrapper, composition, and user rewards from the working directory."""

import math

import numpy as np
import pytest
from test_envs import Counter  # obs = step, reward 1 per step, success from step 3

from dpft.envs.rewards import RewardError, resolve_reward


def rollout(spec, steps=4, action=0.5, end=100):
    env = resolve_reward(spec)(Counter(end=end))
    env.reset(seed=0)
    out = []
    for _ in range(steps):
        _, r, terminated, _, _ = env.step(np.full(1, action, np.float32))
        out.append(r)
        if terminated:
            break
    return out


def test_dense_and_none_are_passthrough():
    assert rollout(None) == rollout("dense") == [1.0, 1.0, 1.0, 1.0]


def test_sparse_success_and_termination():
    assert rollout("sparse_success") == [0.0, 0.0, 1.0, 1.0]
    assert rollout("sparse_success(terminate=True)") == [0.0, 0.0, 1.0]


def test_success_bonus_time_and_action_penalties():
    assert rollout("success_bonus(bonus=5)") == [1.0, 1.0, 6.0, 6.0]
    assert rollout("time_penalty(penalty=0.25)") == [0.75] * 4
    assert rollout("action_penalty(coef=2)", action=0.5) == [0.5] * 4


def test_scale_clip_and_composition_order():
    assert rollout("scale(scale=3, high=2)") == [2.0] * 4
    # applied left to right: sparse first, then the time penalty on top of it
    assert rollout("sparse_success+time_penalty(penalty=0.1)") == pytest.approx([-0.1, -0.1, 0.9, 0.9])


def test_user_function_and_wrapper_from_working_directory(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "import gymnasium as gym\n"
        "def progress(obs, action, reward, info):\n    return float(obs[0]) * 10\n"
        "def broken(obs, action, reward, info):\n    raise ValueError('boom')\n"
        "def nan(obs, action, reward, info):\n    return float('nan')\n"
        "class Double(gym.RewardWrapper):\n"
        "    def __init__(self, env, factor=2.0):\n        super().__init__(env); self.factor = factor\n"
        "    def reward(self, r):\n        return r * self.factor\n"
    )
    monkeypatch.chdir(tmp_path)
    assert rollout("my_rewards:progress", steps=3) == [10.0, 20.0, 30.0]
    assert rollout("my_rewards:Double(factor=3)", steps=2) == [3.0, 3.0]
    with pytest.raises(RewardError, match="progress raised|my_rewards:broken raised ValueError: boom"):
        rollout("my_rewards:broken")
    with pytest.raises(RewardError, match="returned nan; rewards must be finite"):
        rollout("my_rewards:nan")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_reward", "unknown reward 'no_such_reward'"),
        ("missing_module_xyz:fn", "cannot import module 'missing_module_xyz'"),
        ("math:nope", "module 'math' has no attribute 'nope'"),
        ("math:pi", "neither a function nor"),
        ("time_penalty(0.1)", "keyword arguments"),
        ("time_penalty(penalty=__import__('os'))", "cannot parse"),
    ],
)
def test_bad_reward_specs_are_clear(spec, message):
    with pytest.raises(RewardError, match=message):
        resolve_reward(spec)


def test_bad_keyword_is_clear():
    with pytest.raises(RewardError, match="bad arguments for reward time_penalty"):
        resolve_reward("time_penalty(speed=1)")(Counter())
    assert math.isfinite(rollout("time_penalty")[0])
