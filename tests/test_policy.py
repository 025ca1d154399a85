import pytest
import torch
from conftest import KINDS, tiny_policy
from test_fast_sampling import FAST_ATOL
from torch.distributions import Normal

from dpft.base_policies import ConfigError, PolicyConfig
from dpft.base_policies.config import ArchConfig

# The four kinds plus the sampler options the defaults do not reach.
VARIANTS = [
    *[(kind, backbone, {}) for kind, backbone in KINDS],
    ("flow", "mlp", {"integrator": "midpoint"}),
    ("flow", "unet", {"clip_sample": False}),
    ("diffusion", "mlp", {"clip_sample": False}),
]


@pytest.fixture(params=VARIANTS, ids=[f"{k}-{b}{''.join(f'-{v}' for v in a.values())}" for k, b, a in VARIANTS])
def variant(request):
    kind, backbone, arch = request.param
    return with_bounds(tiny_policy(kind, backbone, **arch))


def with_bounds(policy):
    """A non-trivial action normaliser and action bounds. The normalised range [-1, 1] maps to
    [-0.6, 0.8]: the lower bound cuts into it, the upper bound does not, so both the action
    bounds and flow's clipping of its last state to [-1, 1] show in the actions."""
    policy.action_normalizer.scale.fill_(0.7)
    policy.action_normalizer.shift.fill_(0.1)
    policy.action_low.fill_(-0.5)
    policy.action_high.fill_(2.0)
    return policy


def inputs(policy, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = policy.config.arch.num_inference_steps
    obs = torch.randn(batch, policy.obs_dim, generator=g)
    noise = torch.randn(batch, *policy.noise_shape, generator=g)
    return obs, noise, torch.randn(batch, K, *policy.noise_shape, generator=g)


# ----- the samplers written out from their documented formulas ----------------------
# These use the policy's network (denoiser / velocity), schedule and observation
# conditioning, but none of its sampling code.


def ddim_mean_std(policy, cond, x, k, eta):
    """DDIM step k (Song et al. 2021) from level t = (K-1-k) * stride to t - stride, with
    sigma = eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)), floored at 1e-2 * eta."""
    a = policy.config.arch
    stride = a.num_train_steps // a.num_inference_steps
    t = (a.num_inference_steps - 1 - k) * stride
    ab = policy.alphas_cumprod[t]
    ab_prev = policy.alphas_cumprod[t - stride] if t >= stride else torch.tensor(1.0)
    eps = policy.denoiser(x, torch.full((x.shape[0],), float(t)), cond)
    x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    if a.clip_sample:
        x0 = x0.clamp(-1, 1)
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
    mean = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
    return mean, sigma.clamp(min=1e-2 * eta)


def euler_maruyama_mean_std(policy, cond, x, k, noise_level):
    """Step k of dx = v(x, t) dt + noise_level dW on the grid t_k = k / K."""
    K = policy.config.arch.num_inference_steps
    v = policy.velocity(cond, x, torch.full((x.shape[0],), k / K))
    return x + v / K, torch.tensor(noise_level * (1 / K) ** 0.5)


def chain_step(policy, cond, x, k, noise_level):
    step = ddim_mean_std if policy.type_name == "diffusion" else euler_maruyama_mean_std
    return step(policy, cond, x, k, noise_level)


def ode_step(policy, cond, x, k):
    """Flow's deterministic sampler: one Euler or midpoint step of dx/dt = v(x, t)."""
    K = policy.config.arch.num_inference_steps
    t = torch.full((x.shape[0],), k / K)
    v = policy.velocity(cond, x, t)
    if policy.config.arch.integrator == "midpoint":
        v = policy.velocity(cond, x + v / (2 * K), t + 1 / (2 * K))
    return x + v / K


def env_units(policy, x):
    """Last sampler state -> actions: flow clips the state to [-1, 1] (when clip_sample),
    then the min-max normaliser is undone and the action bounds are applied."""
    if policy.type_name == "flow" and policy.config.arch.clip_sample:
        x = x.clamp(-1, 1)
    n = policy.action_normalizer
    return torch.clamp(x * n.scale + n.shift, policy.action_low, policy.action_high)


# ----- deterministic sampling --------------------------------------------------------


@torch.no_grad()
def test_predict_chunk_is_the_documented_sampler(variant):
    obs, x, _ = inputs(variant)
    actions = variant.predict_chunk(obs, x)
    cond = variant.condition(obs)
    for k in range(variant.config.arch.num_inference_steps):
        if variant.type_name == "diffusion":
            x = ddim_mean_std(variant, cond, x, k, eta=0.0)[0]
        else:
            x = ode_step(variant, cond, x, k)
    torch.testing.assert_close(actions, env_units(variant, x), rtol=1e-5, atol=1e-6)


def test_chunk_is_a_deterministic_function_of_noise(policy):
    obs = torch.randn(4, policy.obs_dim)
    noise = torch.randn(4, *policy.noise_shape)
    a = policy.predict_chunk(obs, noise)
    assert torch.equal(a, policy.predict_chunk(obs, noise.clone()))  # bitwise
    assert not torch.allclose(a, policy.predict_chunk(obs, torch.randn(4, *policy.noise_shape)))


def test_history_and_single_obs_agree(policy):
    obs = torch.randn(3, policy.obs_dim)
    hist = obs[:, None].expand(-1, policy.obs_horizon, -1)
    noise = torch.randn(3, *policy.noise_shape)
    assert torch.equal(policy.predict_chunk(obs, noise), policy.predict_chunk(hist, noise))


def test_noise_none_draws_standard_normal_noise(policy):
    obs = torch.randn(2, policy.obs_dim)
    drawn = torch.randn(2, *policy.noise_shape, generator=torch.Generator().manual_seed(7))
    from_generator = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    assert torch.equal(from_generator, policy.predict_chunk(obs, drawn))
    assert not torch.equal(policy.predict_chunk(obs), policy.predict_chunk(obs))


def test_actions_are_clipped_to_the_bounds(policy):
    obs, noise, _ = inputs(policy, batch=8)
    free = policy.predict_chunk(obs, noise)  # tiny_policy has no bounds
    policy.action_low.fill_(-0.3)
    policy.action_high.fill_(0.3)
    assert (free.abs() > 0.3).any() and (free.abs() < 0.3).any()  # some inside, some outside
    assert torch.equal(policy.predict_chunk(obs, noise), free.clamp(-0.3, 0.3))


# ----- stochastic chain --------------------------------------------------------------


@pytest.mark.parametrize("noise_level", [0.5, 0.05])
def test_chain_steps_are_the_documented_gaussians(variant, noise_level):
    """Each transition is mean + std * step_noise, each log-prob is that Gaussian's density
    (torch.distributions.Normal), and the actions are the last state in env units."""
    obs, noise, step_noise = inputs(variant)
    with torch.no_grad():
        actions, chain, log_probs = variant.sample_chain(obs, noise, step_noise, noise_level)
        cond = variant.condition(obs)
        expected_next, expected_log_probs = [], []
        for k in range(step_noise.shape[1]):
            mean, std = chain_step(variant, cond, chain[:, k], k, noise_level)
            expected_next.append(mean + std * step_noise[:, k])
            expected_log_probs.append(Normal(mean, std).log_prob(chain[:, k + 1]).sum(dim=(1, 2)))
        recomputed = variant.chain_log_prob(obs, chain, noise_level)
    assert torch.equal(chain[:, 0], noise)
    torch.testing.assert_close(chain[:, 1:], torch.stack(expected_next, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_probs, torch.stack(expected_log_probs, 1), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(recomputed, torch.stack(expected_log_probs, 1), rtol=1e-5, atol=2e-3)
    torch.testing.assert_close(actions, env_units(variant, chain[:, -1]), rtol=0, atol=0)


def test_chain_log_prob_recomputes_sample_chain(variant):
    """The batched re-evaluation (what a policy-gradient update differentiates) gives the
    log-probs the sampler recorded, and it carries gradients to the weights."""
    obs, noise, step_noise = inputs(variant, batch=4, seed=1)
    with torch.no_grad():
        _, chain, log_probs = variant.sample_chain(obs, noise, step_noise, 0.3)
    recomputed = variant.chain_log_prob(obs, chain, 0.3)
    torch.testing.assert_close(recomputed, log_probs, rtol=1e-5, atol=2e-3)
    recomputed.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in variant.parameters())


def test_chain_mean_path_is_predict_chunk(policy):
    """With zero step noise the chain follows its mean. For flow (Euler) that is the ODE
    sampler exactly. For diffusion the mean is DDIM with eta = noise_level, which reaches the
    eta = 0 sampler only as eta -> 0; eta = 1e-6 enters the mean through sigma^2 <= 1e-12,
    far below float32 resolution. predict_chunk of an MLP policy runs the captured fast path,
    equal to the eager loop within the tolerance tests/test_fast_sampling.py states."""
    obs, noise, step_noise = inputs(policy)
    noise_level = 0.5 if policy.type_name == "flow" else 1e-6
    with torch.no_grad():
        actions, _, _ = policy.sample_chain(obs, noise, torch.zeros_like(step_noise), noise_level)
    expected = policy.predict_chunk(obs, noise)
    torch.testing.assert_close(actions, expected, rtol=0, atol=FAST_ATOL)


def test_default_noise_levels():
    for kind, level in [("diffusion", 1.0), ("flow", 0.1)]:
        p = tiny_policy(kind)
        obs, noise, step_noise = inputs(p)
        with torch.no_grad():
            default, explicit = p.sample_chain(obs, noise, step_noise), p.sample_chain(obs, noise, step_noise, level)
        assert all(torch.equal(a, b) for a, b in zip(default, explicit))


# ----- training loss -----------------------------------------------------------------


def test_loss_is_the_documented_per_sample_regression(policy):
    policy.train()
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(6, policy.obs_dim, generator=g), torch.randn(6, *policy.noise_shape, generator=g)
    noise, t = torch.randn(6, *policy.noise_shape, generator=g), policy.sample_times(6, generator=g)
    loss = policy.denoising_loss(obs, act, t, noise)
    x = policy.action_normalizer.normalize(act)
    cond = policy.condition(obs)
    if policy.type_name == "diffusion":  # epsilon prediction at level t
        ab = policy.alphas_cumprod[t][:, None, None]
        pred, target = policy.denoiser(ab.sqrt() * x + (1 - ab).sqrt() * noise, t.float(), cond), noise
    else:  # velocity on the straight path from noise (t = 0) to action (t = 1)
        tt = t[:, None, None]
        pred, target = policy.velocity(cond, (1 - tt) * noise + tt * x, t), x - noise
    torch.testing.assert_close(loss, ((pred - target) ** 2).mean(dim=(1, 2)))
    torch.testing.assert_close(policy.denoising_loss(obs[2:3], act[2:3], t[2:3], noise[2:3]), loss[2:3])
    loss.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


# ----- errors ------------------------------------------------------------------------


def test_bad_shapes_are_clear(policy):
    obs, noise, step_noise = inputs(policy, batch=2)
    with pytest.raises(ConfigError, match="observation shape"):
        policy.predict_chunk(torch.randn(2, policy.obs_dim + 1))
    with pytest.raises(ConfigError, match="noise shape"):
        policy.predict_chunk(obs, torch.randn(2, 3, 3))
    with pytest.raises(ConfigError, match="step_noise shape"):
        policy.sample_chain(obs, noise, step_noise[:, 1:])
    with pytest.raises(ConfigError, match="chain shape"):
        policy.chain_log_prob(obs, step_noise)


def test_unet_horizon_validation_suggests_fix():
    with pytest.raises(ConfigError, match=r"pred_horizon \(10\) must be a multiple of 4.*try 10 -> 12"):
        PolicyConfig(backbone="unet", arch=ArchConfig(pred_horizon=10, unet_dims=(8, 16, 32)))
    with pytest.raises(ConfigError, match="action_horizon"):
        PolicyConfig(arch=ArchConfig(action_horizon=9, pred_horizon=8))


def test_zero_noise_chunk_fn_is_the_deterministic_mode(policy):
    import numpy as np

    from dpft.finetune.common.rollout import policy_chunk_fn

    obs = np.random.default_rng(0).normal(size=(3, policy.obs_horizon, policy.obs_dim)).astype(np.float32)
    expected = policy.predict_chunk(torch.from_numpy(obs), torch.zeros(3, *policy.noise_shape)).numpy()
    np.testing.assert_array_equal(policy_chunk_fn(policy, zero_noise=True)(obs), expected)
