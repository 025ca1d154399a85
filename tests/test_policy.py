import pytest
import torch
from conftest import tiny_policy

from dpft.base_policies import ConfigError, PolicyConfig
from dpft.base_policies.config import ArchConfig


def test_shapes_and_determinism_given_noise(policy):
    obs = torch.randn(4, policy.obs_dim)
    noise = torch.randn(4, *policy.noise_shape)
    a = policy.predict_chunk(obs, noise)
    assert a.shape == (4, policy.pred_horizon, policy.action_dim)
    assert torch.equal(a, policy.predict_chunk(obs, noise.clone()))  # bitwise
    assert not torch.allclose(a, policy.predict_chunk(obs, torch.randn(4, *policy.noise_shape)))


def test_history_and_single_obs_agree(policy):
    obs = torch.randn(3, policy.obs_dim)
    hist = obs[:, None].expand(-1, policy.obs_horizon, -1)
    noise = torch.randn(3, *policy.noise_shape)
    assert torch.equal(policy.predict_chunk(obs, noise), policy.predict_chunk(hist, noise))


def test_noise_none_samples_fresh_noise(policy):
    obs = torch.randn(2, policy.obs_dim)
    a, b = policy.predict_chunk(obs), policy.predict_chunk(obs)
    assert a.shape == b.shape and not torch.equal(a, b)


def test_loss_is_per_sample_and_differentiable(policy):
    policy.train()
    obs, act = torch.randn(6, policy.obs_dim), torch.randn(6, *policy.noise_shape)
    t = policy.sample_times(6)
    loss = policy.denoising_loss(obs, act, t, torch.randn_like(act))
    assert loss.shape == (6,)
    loss.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_stochastic_chain_log_probs_recompute(policy):
    obs = torch.randn(3, policy.obs_dim)
    K = policy.config.arch.num_inference_steps
    noise, step_noise = torch.randn(3, *policy.noise_shape), torch.randn(3, K, *policy.noise_shape)
    actions, chain, logp = policy.sample_chain(obs, noise, step_noise, 0.5)
    assert actions.shape == (3, *policy.noise_shape) and chain.shape == (3, K + 1, *policy.noise_shape)
    assert logp.shape == (3, K) and torch.isfinite(logp).all()
    torch.testing.assert_close(policy.chain_log_prob(obs, chain, 0.5), logp, rtol=1e-4, atol=1e-3)


def test_actions_respect_bounds():
    p = tiny_policy(action_dim=2)
    p.config.action_low, p.config.action_high = (-0.1, -0.1), (0.1, 0.1)
    p.action_low.fill_(-0.1)
    p.action_high.fill_(0.1)
    p.action_normalizer.scale.fill_(10.0)
    a = p.predict_chunk(torch.randn(8, 5))
    assert a.abs().max() <= 0.1


def test_bad_shapes_are_clear(policy):
    with pytest.raises(ConfigError, match="observation shape"):
        policy.predict_chunk(torch.randn(2, policy.obs_dim + 1))
    with pytest.raises(ConfigError, match="noise shape"):
        policy.predict_chunk(torch.randn(2, policy.obs_dim), torch.randn(2, 3, 3))


def test_unet_horizon_validation_suggests_fix():
    with pytest.raises(ConfigError, match=r"pred_horizon \(10\) must be a multiple of 4.*try 10 -> 12"):
        PolicyConfig(backbone="unet", arch=ArchConfig(pred_horizon=10, unet_dims=(8, 16, 32)))
    with pytest.raises(ConfigError, match="action_horizon"):
        PolicyConfig(arch=ArchConfig(action_horizon=9, pred_horizon=8))


def test_zero_noise_chunk_fn_is_the_deterministic_mode(policy):
    import numpy as np

    from dpft.finetune.rollout import policy_chunk_fn

    obs = np.random.default_rng(0).normal(size=(3, policy.obs_horizon, policy.obs_dim)).astype(np.float32)
    expected = policy.predict_chunk(torch.from_numpy(obs), torch.zeros(3, *policy.noise_shape)).numpy()
    np.testing.assert_array_equal(policy_chunk_fn(policy, zero_noise=True)(obs), expected)
