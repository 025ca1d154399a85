"""The policy layer creates every tensor on the device of its weights and inputs.

Checked without a GPU: policy and inputs go to PyTorch's ``meta`` device (shapes, no data).
A tensor made without a device, or with ``device="cpu"``, lands on the CPU, and combining it
with meta tensors raises "Tensor on device cpu is not on the expected device meta" -- the
error a stray CPU tensor gives on CUDA.
"""

import pytest
import torch
from conftest import tiny_policy

META = torch.device("meta")


@pytest.fixture
def meta_policy(policy):
    return policy.to(META)


def on_meta(*shapes):
    return [torch.randn(*shape, device=META) for shape in shapes]


def placement(*tensors):
    return [(t.device, tuple(t.shape)) for t in tensors]


def test_meta_device_rejects_cpu_tensors():
    """The premise of this file holds in the installed torch."""
    x = torch.randn(2, 3, device=META)
    for cpu in (torch.randn(2, 3), torch.tensor(0.5).expand(2, 3)):
        with pytest.raises(RuntimeError, match="expected device meta"):
            x + cpu
    with pytest.raises(RuntimeError, match="expected device meta"):
        torch.cat([x, torch.randn(2, 3)])


def test_predict_chunk_stays_on_device(meta_policy):
    p = meta_policy
    obs, noise = on_meta((3, p.obs_dim), (3, *p.noise_shape))
    chunks = p.predict_chunk(obs, noise), p.predict_chunk(obs), p.predict_chunk(obs, generator=torch.Generator())
    assert placement(*chunks) == [(META, (3, *p.noise_shape))] * 3


def test_stochastic_chain_stays_on_device(meta_policy):
    p = meta_policy
    K = p.config.arch.num_inference_steps
    obs, noise, step_noise = on_meta((3, p.obs_dim), (3, *p.noise_shape), (3, K, *p.noise_shape))
    actions, chain, log_probs = p.sample_chain(obs, noise, step_noise, 0.5)
    assert placement(actions, chain, log_probs) == [
        (META, (3, *p.noise_shape)),
        (META, (3, K + 1, *p.noise_shape)),
        (META, (3, K)),
    ]
    assert placement(p.chain_log_prob(obs, chain, 0.5)) == [(META, (3, K))]


def test_training_loss_stays_on_device(meta_policy):
    p = meta_policy
    obs, actions = on_meta((4, p.obs_dim), (4, *p.noise_shape))
    times = p.sample_times(4), p.sample_times(4, generator=torch.Generator())
    assert placement(*times) == [(META, (4,))] * 2
    loss = p.denoising_loss(obs, actions, times[0], torch.randn_like(actions))
    assert placement(loss) == [(META, (4,))]


def test_a_cpu_tensor_in_a_step_is_caught(monkeypatch):
    """The check has teeth: a step that builds its std on the default device (as flow's chain
    once did with ``torch.tensor(noise_level * sqrt(dt))``) fails on meta."""
    p = tiny_policy("flow").to(META)
    honest = type(p).step_mean_std

    def leaky(self, cond, x, t, noise_level):
        mean, _ = honest(self, cond, x, t, noise_level)
        return mean, torch.tensor(noise_level * self.dt**0.5)

    monkeypatch.setattr(type(p), "step_mean_std", leaky)
    K = p.config.arch.num_inference_steps
    obs, chain = on_meta((2, p.obs_dim), (2, K + 1, *p.noise_shape))
    with pytest.raises(RuntimeError, match="expected device"):
        p.chain_log_prob(obs, chain, 0.5)
