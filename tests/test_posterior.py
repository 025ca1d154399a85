"""PostBC (posterior behaviour cloning): the ensemble's spread is wide where the data is thin, and
a base trained on the widened targets covers more actions than plain BC on the same demos."""

import numpy as np
import pytest
import torch

from dpft.base_policies import ArchConfig, ConfigError, load_policy
from dpft.base_policies.data import Episode, write_robomimic_hdf5
from dpft.base_policies.data.windows import Windows
from dpft.base_policies.posterior import ensemble_spread
from dpft.base_policies.train_bc import TrainBCConfig, train_bc


def test_spread_is_wide_where_the_data_is_thin():
    gen = torch.Generator().manual_seed(0)
    dense = torch.rand(500, 1, 1, generator=gen)
    sparse = torch.tensor([4.0, 5.0, 6.0]).view(3, 1, 1)
    obs = torch.cat([dense, sparse])
    actions = torch.sin(3 * obs).expand(-1, 2, 1) + 0.01 * torch.randn(503, 2, 1, generator=gen)
    actions[500:] = torch.tensor([1.0, -1.0, 1.0]).view(3, 1, 1)  # one demo each, far from the rest
    episode_of = torch.arange(503) // 4  # windows in episodes of 4; the last 3 form one short episode
    targets = ensemble_spread(Windows(obs, actions), episode_of, members=5, steps=500, seed=0)
    assert targets.spread.shape == actions.shape
    thin, thick = targets.spread[500:].mean(), targets.spread[:500].mean()
    assert thin > 5 * thick, (float(thin), float(thick))
    drawn = targets.sample(torch.arange(503), actions, torch.Generator().manual_seed(1))
    assert drawn.min() >= actions.min() and drawn.max() <= actions.max()  # clipped to the data's range


def _thin_and_thick_episodes() -> list[Episode]:
    """200 demos near the origin that agree (move right), one demo far away (move up)."""
    rng = np.random.default_rng(0)
    eps = []
    for i in range(201):
        start = np.array([3.0, 3.0]) if i == 200 else np.array([rng.uniform(0, 1), 0.0])
        step = np.array([0.0, 0.5]) if i == 200 else np.array([0.5, 0.0])
        obs = start + np.arange(4)[:, None] * 0.1 * step
        acts = np.repeat(step[None], 4, 0) + rng.normal(0, 0.02, (4, 2))
        eps.append(Episode(f"demo_{i}", obs.astype(np.float32), acts.astype(np.float32), np.zeros(4, np.float32)))
    return eps


def _chunk_std(path, at: list[float]) -> float:
    policy = load_policy(path)
    chunks = policy.predict_chunk(torch.tensor([at] * 256), generator=torch.Generator().manual_seed(0))
    return float(chunks.std(0).mean())


@pytest.mark.slow
def test_postbc_base_is_wider_where_one_demo_is_all_there_is(tmp_path):
    data = tmp_path / "thin.hdf5"
    write_robomimic_hdf5(data, _thin_and_thick_episodes(), {"task": "toy_envs:Reach-v0"})
    arch = ArchConfig(obs_horizon=1, pred_horizon=2, action_horizon=2, hidden_dim=64, num_blocks=2)
    common = dict(dataset=data, arch=arch, steps=1500, lr=1e-3, warmup_steps=50, val_fraction=0, progress=False)
    plain = train_bc(TrainBCConfig(out=tmp_path / "bc", checkpoint_every=10**9, **common))
    post = train_bc(
        TrainBCConfig(
            out=tmp_path / "postbc", posterior_members=8, posterior_steps=500, checkpoint_every=10**9, **common
        )
    )
    thin_plain, thin_post = _chunk_std(plain, [3.0, 3.1]), _chunk_std(post, [3.0, 3.1])
    thick_plain, thick_post = _chunk_std(plain, [0.5, 0.0]), _chunk_std(post, [0.5, 0.0])
    assert thin_post > 1.6 * thin_plain, (thin_post, thin_plain)  # measured 0.143 against 0.064
    assert thick_post < 2 * thick_plain + 0.02, (thick_post, thick_plain)  # where demos agree: close to BC


@pytest.mark.parametrize("members, scale", [(1, 1.0), (-2, 1.0), (3, -0.5)])
def test_bad_posterior_settings(members, scale):
    with pytest.raises(ConfigError, match="--posterior-"):
        TrainBCConfig(posterior_members=members, posterior_scale=scale)
