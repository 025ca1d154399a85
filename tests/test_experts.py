"""The experts that produce demonstrations actually solve their tasks."""

import pytest

from dpft.base_policies.infra.errors import TaskError
from dpft.envs.config import EnvConfig
from dpft.envs.experts import get_expert
from dpft.finetune.common.rollout import run_episodes


@pytest.mark.parametrize(
    "task, episodes, min_success",
    [
        ("robotics:FetchReach-v4", 8, 8),
        ("robotics:FetchPickAndPlace-v4", 8, 6),
        ("robotics:FetchPush-v4", 8, 5),
        ("metaworld:button-press-v3", 4, 4),
    ],
)
def test_scripted_expert_succeeds(task, episodes, min_success):
    expert = get_expert(task)
    venv = EnvConfig(task=task, envs=4).make_vector(1, 1, 1)
    results = run_episodes(lambda obs: expert(obs[:, 0])[:, None], venv, episodes, seed=0)
    assert sum(r.success for r in results) >= min_success


def test_locomotion_expert_beats_zero_action():
    expert = get_expert("gym:Hopper-v5")
    venv = EnvConfig(task="gym:Hopper-v5", envs=2).make_vector(1, 1, 1)
    expert_return = sum(r.episode_return for r in run_episodes(lambda o: expert(o[:, 0])[:, None], venv, 2, seed=0))
    still = sum(r.episode_return for r in run_episodes(lambda o: 0 * expert(o[:, 0])[:, None], venv, 2, seed=0))
    assert expert_return > still + 300


def test_no_expert_is_clear():
    with pytest.raises(TaskError, match="no SAC expert for gym:Ant-v5"):
        get_expert("gym:Ant-v5")


def test_expert_levels_are_named_clearly():
    with pytest.raises(TaskError, match="no medium SAC policy for gym:Ant-v5"):
        get_expert("gym:Ant-v5", "medium")
    with pytest.raises(TaskError, match="one level; drop --expert-level"):
        get_expert("metaworld:push-v3", "medium")


@pytest.mark.parametrize("task", ["gym:Hopper-v5", "gym:Walker2d-v5", "gym:HalfCheetah-v5"])
def test_medium_level_is_a_fraction_of_the_expert(task):
    """D4RL-style levels (train_locomotion_expert.py --levels): the medium policy scores well below
    the expert and well above standing still, on the same start states."""

    def mean_return(policy) -> float:
        venv = EnvConfig(task=task, envs=3).make_vector(1, 1, 1)
        return sum(r.episode_return for r in run_episodes(lambda o: policy(o[:, 0])[:, None], venv, 3, seed=0)) / 3

    expert, medium = get_expert(task, "expert"), get_expert(task, "medium")
    top, mid, still = mean_return(expert), mean_return(medium), mean_return(lambda o: 0 * expert(o))
    assert still + 100 < mid < 0.7 * top, (still, mid, top)
