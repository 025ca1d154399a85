"""Demonstrations in the residual's replay (--demos): the corrections the base needed, mixed into every batch."""

import pickle
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from gymnasium import spaces
from synthetic import offset_reach_episodes
from test_residual import TASK, base_dir, quick  # noqa: F401  (the Reach-v0 base that aims 0.4 too high)

from dpft.base_policies import load_policy
from dpft.base_policies.data import load_demonstrations, write_robomimic_hdf5
from dpft.base_policies.infra.errors import ConfigError
from dpft.envs.config import EnvConfig
from dpft.finetune.common.policy_eval import evaluate
from dpft.finetune.residual.demos import DemoMixReplayBuffer, demo_buffer, histories, residual_transitions
from dpft.finetune.residual.policy import Features
from dpft.finetune.residual.train import train_residual

GOAL, STEP = np.array([1.0, 0.5]), 0.25  # toy_envs.Reach


def reach_demos(n: int, seed: int = 0):
    """Demonstrations that aim at Reach-v0's real goal, with the step of their first success."""
    eps = offset_reach_episodes(n, offset=0.0, seed=seed)
    for ep in eps:
        after = ep.obs + STEP * ep.actions
        hit = np.flatnonzero(np.linalg.norm(after - GOAL, axis=1) < 0.1)
        ep.success_step = int(hit[0]) + 1 if len(hit) else -1
        ep.rewards = -np.linalg.norm(after - GOAL, axis=1).astype(np.float32)
    return eps


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "reach.hdf5"
    write_robomimic_hdf5(path, reach_demos(30), {"task": TASK})
    return path


def features_of(base):
    return Features.for_base(base, torch.full((2,), -1.0), torch.full((2,), 1.0))


def test_the_success_step_survives_the_file(demo_file):
    steps = [ep.success_step for ep in load_demonstrations(demo_file).episodes]
    assert steps == [ep.success_step for ep in reach_demos(30)] and all(s > 0 for s in steps)


def test_histories_repeat_the_first_observation_before_the_start():
    obs = np.arange(4, dtype=np.float32)[:, None]
    assert histories(obs, 3)[:, :, 0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]]


def test_each_demonstrated_action_is_the_base_action_plus_the_correction(base_dir, demo_file):  # noqa: F811
    base, episodes = load_policy(base_dir), load_demonstrations(demo_file).episodes
    features, scale = features_of(base), 0.5
    demos = residual_transitions(episodes, base, features, scale, "sparse_success(terminate=True)", seed=0)
    assert len(demos) == sum(ep.success_step for ep in episodes)  # up to each first success, no further
    assert demos.rewards.sum() == len(episodes) and demos.dones.sum() == len(episodes)
    assert np.array_equal(demos.dones, demos.ends) and np.all(demos.rewards[demos.dones] == 1.0)
    a_base = demos.obs[:, -2:] * features.half_range.numpy() + features.center.numpy()  # what the residual sees
    a_demo = np.concatenate([ep.actions[: ep.success_step] for ep in episodes])
    rebuilt = a_base + scale * demos.actions * features.half_range.numpy()
    inside = np.abs(demos.actions) < 1  # where the correction was not clipped
    assert inside.mean() > 0.5 and np.allclose(rebuilt[inside], a_demo[inside], atol=1e-5)
    first = np.r_[True, demos.ends[:-1]]
    assert np.allclose(demos.next_obs[:-1][~demos.ends[:-1]], demos.obs[1:][~first[1:]])  # next is the next step


def test_with_the_tasks_own_reward_the_files_rewards_are_used(base_dir, demo_file):  # noqa: F811
    base, episodes = load_policy(base_dir), load_demonstrations(demo_file).episodes
    demos = residual_transitions(episodes, base, features_of(base), 0.5, "dense", seed=0)
    assert len(demos) == sum(len(ep) - 1 for ep in episodes) and not demos.dones.any()
    assert np.allclose(demos.rewards, np.concatenate([ep.rewards[:-1] for ep in episodes]))
    buf = demo_buffer(demos, spaces.Box(-np.inf, np.inf, (demos.obs.shape[1],)), spaces.Box(-1, 1, (2,)), "cpu", 3, 0.9)
    assert np.array_equal(buf.timeouts[: len(demos), 0], demos.ends)  # n-step sums stop at each demonstration's end


def test_a_batch_takes_its_share_of_rows_from_the_demonstrations():
    obs_space, act_space = spaces.Box(-np.inf, np.inf, (3,)), spaces.Box(-1, 1, (2,))
    online = DemoMixReplayBuffer(100, obs_space, act_space, "cpu", n_envs=1, n_steps=1, gamma=0.9)
    offline = DemoMixReplayBuffer(100, obs_space, act_space, "cpu", n_envs=1, n_steps=1, gamma=0.9)
    for buf, value in ((online, 0.0), (offline, 1.0)):
        for _ in range(50):
            row = np.full((1, 3), value, np.float32)
            buf.add(row, row, np.zeros((1, 2)), np.zeros(1), np.zeros(1), [{}])
    online.demos, online.demo_ratio = offline, 0.25
    batch = online.sample(128)
    assert batch.observations.shape == (128, 3) and int(batch.observations[:, 0].sum()) == 32


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"algo": "ppo"}, "off-policy per-step"),
        ({"form": "chunk"}, "off-policy per-step"),
    ],
)
def test_demos_need_an_off_policy_per_step_residual(tmp_path, base_dir, demo_file, kw, message):  # noqa: F811
    with pytest.raises(ConfigError, match=message):
        quick(tmp_path, base_dir, demos=demo_file, **kw)


def test_demos_refuse_a_reward_they_cannot_carry(base_dir, demo_file):  # noqa: F811
    base, episodes = load_policy(base_dir), load_demonstrations(demo_file).episodes
    with pytest.raises(ConfigError, match="--reward dense or sparse_success"):
        residual_transitions(episodes, base, features_of(base), 0.5, "time_penalty(penalty=0.1)", seed=0)
    for ep in episodes:
        ep.success_step = None
    with pytest.raises(ConfigError, match="does not record when it first succeeded"):
        residual_transitions(episodes, base, features_of(base), 0.5, "sparse_success(terminate=True)", seed=0)


def test_a_run_keeps_its_demonstrations_in_the_checkpointed_replay(tmp_path, base_dir, demo_file, capsys):  # noqa: F811
    copy = tmp_path / "demos.hdf5"
    shutil.copy(demo_file, copy)
    cfg = quick(tmp_path, base_dir, steps=600, algo="td3", demos=copy, checkpoint_every=300)
    train_residual(cfg)
    assert "demos: " in capsys.readouterr().out
    with open(tmp_path / "res" / "checkpoint" / "replay.pkl", "rb") as f:
        buf = pickle.load(f)
    assert isinstance(buf, DemoMixReplayBuffer) and buf.demo_ratio == 0.5 and buf.demos.pos > 0
    copy.unlink()  # a resumed run reads them from the checkpoint, not from the file
    train_residual(replace(cfg, steps=900, resume=True))


@pytest.mark.slow
def test_demonstrations_let_a_sparse_reward_residual_fix_the_offset_sooner(tmp_path, base_dir, demo_file):  # noqa: F811
    """With the sparse success reward and a budget too small for the residual to find the goal on
    its own, demonstrations of the goal in half of each batch show it where the reward is."""
    env = EnvConfig(task=TASK, envs=8, seed=3)
    kw = dict(algo="td3", steps=1200, reward="sparse_success(terminate=True)")
    alone = evaluate(load_policy(train_residual(quick(tmp_path / "alone", base_dir, **kw))), env, 50)
    helped = evaluate(load_policy(train_residual(quick(tmp_path / "demos", base_dir, demos=demo_file, **kw))), env, 50)
    # measured: 0.00 alone, 0.66 with demonstrations (50 episodes)
    assert helped["success_rate"] >= 0.5 and helped["success_rate"] >= alone["success_rate"] + 0.4, (alone, helped)
