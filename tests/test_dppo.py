"""DPPO: PPO through the last denoising steps of the base's own denoiser."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import StopAt

from dpft.base_policies import load_policy
from dpft.base_policies.infra.interrupt import RunInterrupted
from dpft.base_policies.policy import DenoisingPolicy
from dpft.envs.config import EnvConfig
from dpft.finetune.common.policy_eval import evaluate
from dpft.finetune.common.run import make_vec_env, run_sb3
from dpft.finetune.dppo.train import DPPOConfig, DPPOMethod, train_dppo

TASK = "toy_envs:Obstacle-v0"


@pytest.fixture(scope="module")
def base_dir(obstacle_base):
    return obstacle_base  # passes on the left 70% of the time; success needs the right (conftest.py)


def quick(tmp_path, base_dir, **kw) -> DPPOConfig:
    defaults = dict(
        base=str(base_dir), task=TASK, out=tmp_path / "dppo", steps=2048, envs=4, rollout_steps=16, batch_size=32,
        eval_every=10**9, eval_episodes=50, checkpoint_every=10**9, progress=False, reward="dense", final="last",
    )  # fmt: skip
    return DPPOConfig(**{**defaults, **kw})


def model_of(tmp_path, base_dir, **kw):
    cfg, method = quick(tmp_path, base_dir, **kw), DPPOMethod()
    base = load_policy(base_dir)
    venv = method.wrap_vec_env(cfg, base, make_vec_env(cfg, lambda: method.make_env(cfg, base)))
    return method.new_model(cfg, base, venv), venv


def test_chain_log_probs_are_the_written_out_gaussians_and_the_first_ratio_is_one(tmp_path, base_dir):
    model, venv = model_of(tmp_path, base_dir, ft_steps=3, min_std=0.2)
    policy = model.policy
    obs = torch.as_tensor(np.repeat(venv.reset(), 8, axis=0))
    actions, _, total = policy(obs)
    chain, stored = policy.split(actions)
    assert chain.shape == (32, len(policy.actor.timesteps) + 1, 8, 2) and stored.shape == (32, 3)
    again = policy.step_log_probs(obs, chain)
    assert torch.allclose(again, stored, atol=1e-4) and torch.allclose(total, stored.sum(1), atol=1e-4)  # ratio 1
    cond = policy.actor.condition(policy.history(obs))
    level = policy.actor.default_noise_level
    for i, k in enumerate(range(policy.first_ft, len(policy.actor.timesteps))):
        t = policy.actor.timesteps[k].expand(32)
        mean, std = policy.actor.step_mean_std(cond, chain[:, k], t, level)
        std = torch.clamp(std.expand_as(mean), min=0.2)
        x = chain[:, k + 1]
        written = (-0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum((1, 2))
        assert torch.allclose(again[:, i], written, atol=1e-3)
    for k in range(policy.first_ft):  # the steps before the fine-tuned ones are the frozen base's, deterministic
        t = policy.actor.timesteps[k].expand(32)
        assert torch.allclose(chain[:, k + 1], policy.frozen.step(cond, chain[:, k], t), atol=1e-5)


def test_an_update_with_zero_advantage_leaves_the_denoiser_unchanged(tmp_path, base_dir):
    model, venv = model_of(tmp_path, base_dir, critic_warmup=0)
    before = {k: v.clone() for k, v in model.policy.actor.denoiser.state_dict().items()}
    _, callback = model._setup_learn(64)
    model.collect_rollouts(venv, callback, model.rollout_buffer, model.n_steps)
    model.rollout_buffer.advantages[:] = 0.0
    model.train()
    after = model.policy.actor.denoiser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.iterations == 1


def test_the_bc_regulariser_is_the_nll_of_the_frozen_bases_chains(tmp_path, base_dir):
    """At the start the fine-tuned copy is the base, so the regulariser is minus the mean
    log-probability, per action dimension, that the base gave its own sampled chain."""
    model, venv = model_of(tmp_path, base_dir, ft_steps=3)
    policy = model.policy
    obs = torch.as_tensor(np.repeat(venv.reset(), 8, axis=0))
    torch.manual_seed(7)
    loss = policy.bc_loss(obs)
    torch.manual_seed(7)
    chain, base_log_probs = policy.sample_chain(obs, policy.frozen)
    assert torch.allclose(loss, -base_log_probs.mean() / chain[0, 0].numel(), atol=1e-5)
    loss.backward()  # it trains the fine-tuned steps, not the frozen base
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.actor.denoiser.parameters())
    assert all(p.grad is None for p in policy.frozen.parameters())


def test_the_bc_regulariser_holds_the_denoiser_near_the_base(tmp_path, base_dir):
    base = load_policy(base_dir).denoiser.state_dict()

    def drift(bc_coef: float) -> float:
        cfg = quick(tmp_path / str(bc_coef), base_dir, steps=1024, critic_warmup=0, lr=3e-4, bc_coef=bc_coef)
        tuned = load_policy(train_dppo(cfg)).denoiser.state_dict()
        return sum(float(((tuned[k] - base[k]) ** 2).sum()) for k in base)

    free, held = drift(0.0), drift(10.0)
    assert held < 0.5 * free, f"squared weight change from the base: {held:.3g} with BC, {free:.3g} without"


def test_the_artifact_is_a_policy_folder_of_the_base_type_with_the_fine_tuned_weights(tmp_path, base_dir):
    out = train_dppo(quick(tmp_path, base_dir, steps=512, critic_warmup=0))
    tuned, base = load_policy(out), load_policy(base_dir)
    assert isinstance(tuned, DenoisingPolicy) and type(tuned) is type(base)
    assert json.loads((out / "config.json").read_text())["provenance"]["method"] == "finetune dppo"
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), base.state_dict().values()))


@pytest.mark.slow
def test_dppo_moves_the_denoiser_to_the_mode_that_succeeds(tmp_path, base_dir):
    base = load_policy(base_dir)
    env_cfg = EnvConfig(task=TASK, envs=8, seed=123)
    before = evaluate(base, env_cfg, 100)["success_rate"]
    assert before < 0.5
    cfg = quick(tmp_path, base_dir, steps=16384, envs=8, rollout_steps=32, batch_size=64, lr=1e-4, clip_range=0.1)
    after = evaluate(load_policy(train_dppo(cfg)), env_cfg, 100)["success_rate"]
    assert after >= before + 0.3, f"DPPO did not move the denoiser: {before:.2f} -> {after:.2f}"


@pytest.mark.slow
def test_interrupted_dppo_resumes_to_the_same_weights(tmp_path, base_dir):
    kw = dict(steps=768, envs=2, rollout_steps=16, batch_size=16, critic_warmup=1)
    whole = load_policy(train_dppo(quick(tmp_path / "whole", base_dir, **kw)))
    cfg = quick(tmp_path / "cut", base_dir, **kw)
    method = DPPOMethod()
    stop = 8 * (2 * 16 + 6)  # env steps: mid-way through the second rollout
    method.callbacks = lambda c, m, b, k, orig=method.callbacks: [*orig(c, m, b, k), StopAt(stop, k)]
    with pytest.raises(RunInterrupted):
        run_sb3(cfg, method)
    cfg.resume = True
    resumed = load_policy(train_dppo(cfg))
    for (name, p), q in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
