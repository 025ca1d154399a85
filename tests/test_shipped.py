"""The policies that ship inside the package load by name and fit their tasks."""

import pytest
import torch

from dpft.base_policies import CheckpointError, load_policy
from dpft.base_policies.checkpoint import shipped_policies
from dpft.envs.chunking import check_policy_fits
from dpft.envs.tasks import make

EXPECTED = ["gym-Hopper-v5", "gym-Walker2d-v5", "metaworld-push-v3"]


def test_expected_policies_ship():
    assert set(EXPECTED) <= set(shipped_policies())


@pytest.mark.parametrize("name", shipped_policies())
def test_shipped_policy_loads_and_fits_its_task(name):
    policy = load_policy(f"shipped:{name}")
    task = policy.config.task
    assert task and name.startswith(task.replace(":", "-"))  # "-mh": the mixed-data base of the task
    env = make(task)
    check_policy_fits(policy, env, task)
    obs, _ = env.reset(seed=0)
    chunk = policy.predict_chunk(torch.from_numpy(obs)[None], torch.zeros(1, *policy.noise_shape))
    assert env.action_space.contains(chunk[0, 0].numpy())


def test_unknown_shipped_name():
    with pytest.raises(CheckpointError, match="no shipped policy 'nope'"):
        load_policy("shipped:nope")
