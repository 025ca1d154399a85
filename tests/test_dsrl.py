"""DSRL on a task where the base policy must change its mode to improve."""

import json
import math
import warnings

import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv
from synthetic import bimodal_episodes

from dpft.base_policies import ArchConfig, CheckpointError, ConfigError, TaskError, load_policy
from dpft.base_policies.data import write_robomimic_hdf5
from dpft.base_policies.run_folder import RunFolder
from dpft.base_policies.train_bc import TrainBCConfig, train_bc
from dpft.envs.chunking import ChunkedEnv
from dpft.envs.config import EnvConfig
from dpft.envs.tasks import make
from dpft.finetune import cli
from dpft.finetune.dsrl import train as dsrl_train
from dpft.finetune.dsrl.noise_env import NoiseActionEnv
from dpft.finetune.dsrl.train import DSRLConfig, train_dsrl
from dpft.finetune.evaluate import evaluate

TASK = "toy_envs:Obstacle-v0"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    write_robomimic_hdf5(d / "demos.hdf5", bimodal_episodes(300, left_fraction=0.7), {"task": TASK})
    arch = ArchConfig(obs_horizon=1, pred_horizon=8, action_horizon=8, hidden_dim=128, num_blocks=2)
    return train_bc(
        TrainBCConfig(
            dataset=d / "demos.hdf5",
            out=d / "bc",
            arch=arch,
            steps=1500,
            lr=1e-3,
            warmup_steps=50,
            checkpoint_every=10**9,
            progress=False,
        )
    )


def quick(tmp_path, base_dir, **kw):
    return DSRLConfig(
        base=str(base_dir),
        out=tmp_path / "dsrl",
        steps=kw.pop("steps", 2400),
        warmup_steps=400,
        eval_every=10**9,
        eval_episodes=50,
        checkpoint_every=800,
        progress=False,
        **kw,
    )


def test_noise_env_passes_gymnasium_and_sb3_checkers(base_dir):
    base = load_policy(base_dir)
    env = NoiseActionEnv(ChunkedEnv(make(TASK), 1, 8, 4), base, 1.5)  # 2 chunks per episode
    assert env.action_space.shape == (16,) and env.observation_space.shape == (2,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=False)


@pytest.mark.parametrize("variant", ["na", "sac"])
def test_dsrl_improves_success_and_artifact_round_trips(tmp_path, base_dir, capsys, variant):
    base = load_policy(base_dir)
    env_cfg = EnvConfig(task=TASK, envs=8, seed=123)
    before = evaluate(base, env_cfg, 100)["success_rate"]
    assert before < 0.5  # the base mostly goes left

    out = train_dsrl(quick(tmp_path, base_dir, variant=variant))
    steered = load_policy(out)  # a Policy like any other; its type says it is steered
    assert type(steered).__name__ == "SteeredPolicy" and json.loads((out / "config.json").read_text())["type"] == "dsrl"
    after = evaluate(steered, env_cfg, 100)["success_rate"]
    assert after >= before + 0.3, f"DSRL did not learn to steer: {before:.2f} -> {after:.2f}"

    # `dpft eval` on the run folder evaluates the steered policy, with no extra flags
    capsys.readouterr()
    assert (
        cli.main(
            [
                "eval",
                "--policy",
                str(out.parent),
                "--task",
                TASK,
                "--episodes",
                "100",
                "--envs",
                "8",
                "--seed",
                "123",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["success_rate"] == after

    obs = torch.zeros(4, 2)
    eps = torch.randn(4, *steered.noise_shape)
    assert torch.equal(steered.predict_chunk(obs, eps), steered.predict_chunk(obs, eps.clone()))
    assert not torch.equal(steered.predict_chunk(obs), base.predict_chunk(obs, torch.zeros(4, 8, 2)))


def test_na_learns_on_executed_chunks_without_touching_the_base(tmp_path, base_dir):
    cfg = quick(tmp_path, base_dir, variant="na", task=TASK, envs=2, distill_samples=3, steps=1600, layer_norm=True)
    base = load_policy(base_dir)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    venv = DummyVecEnv([dsrl_train.make_env_fn(cfg, base)] * cfg.envs)
    model = dsrl_train.new_model(cfg, base, venv)
    model.learn(total_timesteps=100)  # 25 warm-up transitions per env, then 2 gradient steps per vector step

    assert model._n_updates > 0
    for critic in (model.critic, model.action_critic):  # --layer-norm reaches both critics
        assert sum(isinstance(m, torch.nn.LayerNorm) for m in critic.modules()) == cfg.critics * cfg.layers
    assert all(torch.equal(v, frozen[k]) for k, v in base.state_dict().items()), "the base must stay frozen"
    assert all(p.grad is None for p in base.parameters()), "no gradient may reach the base"

    # the buffer holds what the base really executed for the chosen noise and for the distillation noises
    data = model.replay_buffer.sample(16)
    obs = data.observations.view(-1, base.obs_horizon, base.obs_dim)
    noise = data.actions * cfg.action_magnitude
    k = base.action_horizon
    assert torch.allclose(
        base.predict_chunk(obs, noise.view(-1, *base.noise_shape))[:, :k].flatten(1), data.chunks, atol=1e-5
    )
    for j in range(3):
        w = data.distill_noise[:, j].view(-1, *base.noise_shape)
        assert w.abs().max() <= cfg.action_magnitude
        assert torch.allclose(base.predict_chunk(obs, w)[:, :k].flatten(1), data.distill_chunks[:, j], atol=1e-5)

    # the action critic, its target and its optimiser survive a checkpoint round trip
    run = RunFolder(tmp_path / "ckpt")
    dsrl_train.save_checkpoint(model, run)
    loaded, _ = dsrl_train.load_model(cfg, base, venv, run)
    for name in ("action_critic", "action_critic_target"):
        a, b = getattr(model, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert loaded.action_critic.optimizer.state_dict()["state"], "optimiser moments must be restored"
    assert loaded.replay_buffer.chunks.shape == model.replay_buffer.chunks.shape


def test_interrupted_run_resumes(tmp_path, base_dir, monkeypatch):
    original, calls = dsrl_train.DSRLCallback._on_step, {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 150:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(dsrl_train.DSRLCallback, "_on_step", flaky)
    with pytest.raises(KeyboardInterrupt, match="interrupted at 1200 env steps"):
        train_dsrl(quick(tmp_path, base_dir, steps=1600))
    monkeypatch.setattr(dsrl_train.DSRLCallback, "_on_step", original)
    seen = {}

    def spy(self):
        seen.setdefault("first", self.num_timesteps)
        return original(self)

    monkeypatch.setattr(dsrl_train.DSRLCallback, "_on_step", spy)
    out = train_dsrl(DSRLConfig(out=tmp_path / "dsrl", resume=True, progress=False))
    assert seen["first"] == 151, "the resumed run must continue from the saved step counter"
    assert load_policy(out).action_horizon == 8


def test_bad_input(tmp_path, base_dir, capsys):
    with pytest.raises(TaskError, match="expects observations of size 2"):
        train_dsrl(quick(tmp_path, base_dir, task="gym:Hopper-v5"))
    with pytest.raises(ConfigError, match="--target-kl 1.0 cannot be reached"):
        train_dsrl(quick(tmp_path, base_dir, target_kl=1.0))
    with pytest.raises(ConfigError, match="unknown --variant 'gan'"):
        quick(tmp_path, base_dir, variant="gan")
    (tmp_path / "bad_rew.py").write_text("def r(obs, action, reward, info):\n    raise ValueError('no')\n")
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = cli.main(
            [
                "finetune",
                "dsrl",
                "--base",
                str(base_dir),
                "--out",
                str(tmp_path / "r"),
                "--steps",
                "200",
                "--warmup-steps",
                "100",
                "--reward",
                "bad_rew:r",
                "--no-progress",
            ]
        )
    finally:
        os.chdir(cwd)
    assert code == 2 and "reward function bad_rew:r raised ValueError" in capsys.readouterr().err


def test_resume_from_damaged_checkpoint_is_clear(tmp_path, base_dir):
    train_dsrl(quick(tmp_path, base_dir, steps=900))
    (tmp_path / "dsrl" / "checkpoint" / "sac.zip").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="checkpoint is damaged"):
        train_dsrl(DSRLConfig(out=tmp_path / "dsrl", resume=True, progress=False))
    assert (tmp_path / "dsrl" / "policy" / "config.json").exists()  # nothing already saved is lost


def test_noise_prior_penalty_is_the_kl_to_the_base_noise():
    """The per-sample regulariser, averaged, is KL(pi || N(0, I)) over the noise, Jacobians of the
    [-1, 1] scaling and the tanh squash included: a noise policy N(0, 0.1^2) per coordinate
    (tanh is linear there) must come out at 0.5 * (0.01 - 1 - ln 0.01) nats per coordinate."""
    from types import SimpleNamespace

    from dpft.finetune.dsrl.na import DSRLNA

    m, d, sigma = 1.5, 16, 0.1
    x = torch.randn(200_000, d, dtype=torch.float64) * (sigma / m)  # pre-tanh, so that w = m tanh(x) ~ N(0, sigma^2)
    u = torch.tanh(x)
    log_prob = (torch.distributions.Normal(0.0, sigma / m).log_prob(x) - torch.log1p(-u.pow(2))).sum(dim=1)
    kl = DSRLNA._regulariser(SimpleNamespace(noise_prior=True), u, log_prob, m).mean().item()
    expected = d * 0.5 * (sigma**2 - 1 - math.log(sigma**2))
    assert kl == pytest.approx(expected, rel=0.01)
    assert DSRLNA._regulariser(SimpleNamespace(noise_prior=False), u, log_prob, m).mean().item() == pytest.approx(
        log_prob.mean().item()
    )


def test_distillation_skips_next_states_that_ended_the_episode():
    """Q_A is never trained at a terminal next state (the TD target does not bootstrap there),
    so the noise critic must not be fitted to it: those rows get weight 0, all others 1."""
    from types import SimpleNamespace

    from dpft.finetune.dsrl.na import DSRLNA

    b, n, d_obs, d_w, d_a = 3, 2, 4, 5, 6
    data = SimpleNamespace(
        observations=torch.randn(b, d_obs),
        next_observations=torch.randn(b, d_obs),
        actions=torch.rand(b, d_w),
        chunks=torch.randn(b, d_a),
        distill_noise=torch.randn(b, n, d_w),
        distill_chunks=torch.randn(b, n, d_a),
        dones=torch.tensor([[0.0], [1.0], [0.0]]),
    )
    model = SimpleNamespace(distill_policy_noise=True)
    obs, noise, chunks, weight = DSRLNA._distill_batch(model, data, 1.5, torch.rand(b, d_w), torch.randn(b, d_a))
    assert obs.shape[0] == noise.shape[0] == chunks.shape[0] == weight.shape[0] == b * (n + 2)
    assert weight.tolist() == [1.0] * (b * (n + 1)) + [1.0, 0.0, 1.0]
    assert torch.equal(obs[-b:], data.next_observations)


def test_resuming_a_run_from_before_the_noise_prior_keeps_its_behaviour(tmp_path, base_dir):
    """A config.yaml written before --noise-prior existed trained with an entropy bonus and no
    distillation on the actor's noise; resuming it must not switch to today's defaults."""
    import yaml

    cfg = quick(tmp_path, base_dir, task=TASK)
    base = load_policy(base_dir)
    venv = DummyVecEnv([dsrl_train.make_env_fn(cfg, base)])
    model = dsrl_train.new_model(cfg, base, venv)
    run = RunFolder(cfg.out)
    dsrl_train.save_checkpoint(model, run)
    run.write_config(cfg)
    old = yaml.safe_load(run.config_path.read_text())
    for key in dsrl_train.BEFORE_KEY_EXISTED:
        del old[key]
    run.config_path.write_text(yaml.safe_dump(old))

    resumed_cfg = run.read_config(DSRLConfig, dsrl_train.BEFORE_KEY_EXISTED)
    assert not resumed_cfg.noise_prior and not resumed_cfg.distill_policy_noise
    loaded, _ = dsrl_train.load_model(resumed_cfg, base, venv, run)
    assert model.noise_prior and not loaded.noise_prior and not loaded.distill_policy_noise
    assert DSRLConfig().noise_prior, "a new run still gets today's default"
