"""The captured fast sampler (base_policies/fast_sampling.py) against the eager reference loop.

The fast path sums the input layer in another order and bakes the schedule in as floats, so it
equals the eager loop to float32 rounding, not bit for bit: FAST_ATOL (in environment units of
actions of order 1) is the tolerance it is held to. It must also never run on stale weights
(preference fine-tuning changes them in place) and must stay deterministic given the noise.
"""

import pytest
import torch
from conftest import tiny_policy

from dpft.base_policies import fast_sampling

FAST_ATOL = 1e-5

MLP_VARIANTS = [
    ("diffusion", {}),
    ("diffusion", {"clip_sample": False}),
    ("diffusion", {"num_inference_steps": 5, "num_train_steps": 50}),
    ("flow", {}),
    ("flow", {"integrator": "midpoint"}),
    ("flow", {"clip_sample": False}),
]


def eager(policy, obs, noise, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("DPFT_FAST_SAMPLER", "0")
        return policy.predict_chunk(obs, noise)


@pytest.mark.parametrize(
    "kind,arch", MLP_VARIANTS, ids=[f"{k}{''.join(f'-{v}' for v in a.values())}" for k, a in MLP_VARIANTS]
)
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_fast_path_matches_the_eager_sampler(kind, arch, batch, monkeypatch):
    policy = tiny_policy(kind, "mlp", hidden_dim=64, num_blocks=2, **arch)
    g = torch.Generator().manual_seed(batch)
    obs = torch.randn(batch, policy.obs_dim, generator=g)
    noise = torch.randn(batch, *policy.noise_shape, generator=g)
    assert fast_sampling.fast_sampler(policy) is None  # autograd is on outside predict_chunk
    fast = policy.predict_chunk(obs, noise)
    assert policy.__dict__.get("_fast_sampler") is not None, "the fast path did not run"
    torch.testing.assert_close(fast, eager(policy, obs, noise, monkeypatch), rtol=0, atol=FAST_ATOL)
    assert torch.equal(fast, policy.predict_chunk(obs, noise.clone()))  # deterministic given the noise


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_fast_path_follows_weights_changed_in_place(kind, monkeypatch):
    """An optimiser step and an EMA-style foreach update change the weights in place; the fast
    path (its cached time table included) must follow both."""
    policy = tiny_policy(kind, "mlp")
    obs, noise = torch.randn(4, policy.obs_dim), torch.randn(4, *policy.noise_shape)
    before = policy.predict_chunk(obs, noise)
    opt = torch.optim.Adam(policy.parameters(), lr=0.05)
    actions = torch.rand(4, *policy.noise_shape)
    loss, _ = policy(obs, actions)
    loss.backward()
    opt.step()
    after = policy.predict_chunk(obs, noise)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, eager(policy, obs, noise, monkeypatch), rtol=0, atol=FAST_ATOL)
    with torch.no_grad():
        params = list(policy.denoiser.time.parameters())
        torch._foreach_lerp_(params, [torch.randn_like(p) for p in params], 0.5)
    torch.testing.assert_close(
        policy.predict_chunk(obs, noise), eager(policy, obs, noise, monkeypatch), rtol=0, atol=FAST_ATOL
    )


def test_unet_and_autograd_take_the_eager_loop():
    unet = tiny_policy("diffusion", "unet")
    with torch.no_grad():
        assert fast_sampling.fast_sampler(unet) is None
    mlp = tiny_policy("diffusion", "mlp")
    with torch.no_grad():
        assert fast_sampling.fast_sampler(mlp) is not None
    assert fast_sampling.fast_sampler(mlp) is None  # gradients wanted: the reference loop


def test_shipped_policy_fast_path_matches(monkeypatch):
    from dpft.base_policies import load_policy

    policy = load_policy("shipped:metaworld-push-v3")
    obs = torch.randn(8, policy.obs_horizon, policy.obs_dim)
    noise = torch.randn(8, *policy.noise_shape)
    torch.testing.assert_close(
        policy.predict_chunk(obs, noise), eager(policy, obs, noise, monkeypatch), rtol=0, atol=FAST_ATOL
    )


def test_a_failing_trace_falls_back_to_the_eager_loop(monkeypatch):
    policy = tiny_policy("diffusion", "mlp")
    obs, noise = torch.randn(2, policy.obs_dim), torch.randn(2, *policy.noise_shape)

    def broken(*args, **kwargs):
        raise RuntimeError("no tracer here")

    monkeypatch.setattr(torch.jit, "trace", broken)
    with pytest.warns(UserWarning, match="could not be traced"):
        first = policy.predict_chunk(obs, noise)
    assert torch.equal(first, eager(policy, obs, noise, monkeypatch))
    with torch.no_grad():
        assert fast_sampling.fast_sampler(policy) is None  # not tried again
