"""DSRL on a task where the base policy must change its mode to improve."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import StopAt
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from dpft.base_policies import CheckpointError, ConfigError, TaskError, load_policy
from dpft.base_policies.infra.interrupt import RunInterrupted
from dpft.base_policies.infra.run_folder import RunFolder
from dpft.base_policies.policy import Policy
from dpft.envs.chunking import ChunkedEnv
from dpft.envs.config import EnvConfig
from dpft.envs.tasks import make
from dpft.finetune.commands import cli
from dpft.finetune.common.guard import Guard
from dpft.finetune.common.policy_eval import evaluate
from dpft.finetune.common.run import make_vec_env
from dpft.finetune.common.run_checkpoint import load_sb3_checkpoint, save_sb3_checkpoint
from dpft.finetune.common.stats import wilson_interval
from dpft.finetune.dsrl.na import DSRLNA
from dpft.finetune.dsrl.noise_env import NoiseActionEnv
from dpft.finetune.dsrl.train import DSRL, DSRLConfig, NAOptions, train_dsrl

TASK = "toy_envs:Obstacle-v0"


@pytest.fixture(scope="module")
def base_dir(obstacle_base):
    return obstacle_base  # shared with test_find.py (conftest.py)


def quick(tmp_path, base_dir, **kw):
    """A short run with the settings these tests were built on: the toy task's own reward, the last
    policy as the result, batch 256, plain critics and one update per transition (the defaults'
    presets are tested in test_presets.py)."""
    kw = {"reward": "dense", "final": "last", "batch_size": 256, "layer_norm": False, "utd": 1.0, **kw}
    return DSRLConfig(
        base=str(base_dir),
        out=tmp_path / "dsrl",
        steps=kw.pop("steps", 2400),
        warmup_steps=400,
        eval_every=kw.pop("eval_every", 10**9),
        eval_episodes=kw.pop("eval_episodes", 50),
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


@pytest.mark.slow
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
    na = NAOptions(distill_samples=3)
    cfg = quick(tmp_path, base_dir, variant="na", task=TASK, envs=2, na=na, steps=1600, layer_norm=True)
    base = load_policy(base_dir)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    venv = make_vec_env(cfg, lambda: DSRL().make_env(cfg, base))
    model = DSRL().new_model(cfg, base, venv)
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
    save_sb3_checkpoint(model, tmp_path / "ckpt")
    loaded, _ = load_sb3_checkpoint(DSRLNA, tmp_path / "ckpt", venv, **DSRL().load_kwargs(cfg, base))
    for name in ("action_critic", "action_critic_target"):
        a, b = getattr(model, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert loaded.action_critic.optimizer.state_dict()["state"], "optimiser moments must be restored"
    assert loaded.replay_buffer.chunks.shape == model.replay_buffer.chunks.shape


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path, monkeypatch):
    """A stop mid-episode (Meta-World push: 50 chunks per episode, stop after 37), with 2 envs and
    DSRL-NA, then --resume: the weights, optimiser moments, replay buffer and evaluations equal
    those of a run that was never stopped."""
    kw = dict(
        base="shipped:metaworld-push-v3",
        envs=2,
        steps=480,
        warmup_steps=160,
        hidden=32,
        batch_size=32,
        eval_every=240,
        eval_episodes=2,
        checkpoint_every=10**9,
        progress=False,
        seed=7,
        final="last",  # one evaluation per line below; the guarded default resumes in test_distributed.py
    )
    train_dsrl(DSRLConfig(out=tmp_path / "straight", **kw))
    original = DSRL.callbacks
    monkeypatch.setattr(
        DSRL, "callbacks", lambda self, cfg, model, base, k: [*original(self, cfg, model, base, k), StopAt(296, k)]
    )
    with pytest.raises(RunInterrupted, match="interrupted at 296 env steps; continue with: dpft finetune dsrl"):
        train_dsrl(DSRLConfig(out=tmp_path / "stopped", **kw))
    monkeypatch.setattr(DSRL, "callbacks", original)
    train_dsrl(DSRLConfig(out=tmp_path / "stopped", resume=True, progress=False))

    def final(name):
        cfg = RunFolder(tmp_path / name).read_config(DSRLConfig)
        base = load_policy(cfg.base)
        venv = make_vec_env(cfg, lambda: DSRL().make_env(cfg, base))
        return load_sb3_checkpoint(DSRLNA, tmp_path / name / "checkpoint", venv, **DSRL().load_kwargs(cfg, base))[0]

    a, b = final("straight"), final("stopped")
    assert a.num_timesteps == b.num_timesteps == 120 and a._n_updates == b._n_updates > 0
    for module in ("policy", "action_critic", "action_critic_target"):
        sa, sb = getattr(a, module).state_dict(), getattr(b, module).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{module} differs after resume"
    moments_a = a.action_critic.optimizer.state_dict()["state"]
    moments_b = b.action_critic.optimizer.state_dict()["state"]
    assert all(torch.equal(moments_a[i]["exp_avg"], moments_b[i]["exp_avg"]) for i in moments_a)
    assert np.array_equal(a.replay_buffer.observations, b.replay_buffer.observations)
    assert np.array_equal(a.replay_buffer.chunks, b.replay_buffer.chunks)
    assert (tmp_path / "straight" / "evals.jsonl").read_text().count("env_steps") == 2

    def strip(name):
        return [
            {k: v for k, v in json.loads(line).items() if k != "wall_s"}
            for line in (tmp_path / name / "evals.jsonl").read_text().splitlines()
        ]

    assert strip("straight") == strip("stopped")


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
    (tmp_path / "dsrl" / "checkpoint" / "model.zip").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="checkpoint is damaged"):
        train_dsrl(DSRLConfig(out=tmp_path / "dsrl", resume=True, progress=False))
    assert (tmp_path / "dsrl" / "policy" / "config.json").exists()  # nothing already saved is lost


def test_noise_prior_penalty_is_the_kl_to_the_base_noise():
    """The per-sample regulariser, averaged, is KL(pi || N(0, I)) over the noise, Jacobians of the
    [-1, 1] scaling and the tanh squash included: a noise policy N(0, 0.1^2) per coordinate
    (tanh is linear there) must come out at 0.5 * (0.01 - 1 - ln 0.01) nats per coordinate."""
    from types import SimpleNamespace

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
    venv = make_vec_env(cfg, lambda: DSRL().make_env(cfg, base))
    model = DSRL().new_model(cfg, base, venv)
    run = RunFolder(cfg.out)
    save_sb3_checkpoint(model, run.checkpoint_dir)
    run.write_config(cfg)
    old = yaml.safe_load(run.config_path.read_text())
    old |= old.pop("na")  # written before the --na.* group, too
    for key in DSRL.before_key_existed:
        del old[key]
    run.config_path.write_text(yaml.safe_dump(old))

    resumed_cfg = run.read_config(DSRLConfig, DSRL.before_key_existed)
    assert not resumed_cfg.noise_prior and not resumed_cfg.na.distill_policy_noise
    loaded, _ = load_sb3_checkpoint(DSRLNA, run.checkpoint_dir, venv, **DSRL().load_kwargs(resumed_cfg, base))
    assert model.noise_prior and not loaded.noise_prior and not loaded.distill_policy_noise
    assert model.q_scaled_temperature and not loaded.q_scaled_temperature  # the raw temperature it had
    assert DSRLConfig().noise_prior, "a new run still gets today's default"


def test_one_base_call_per_vector_step_gives_each_env_its_own_chunks(base_dir):
    """NoiseVecEnv denoises every env's noises in one call; each env then runs exactly the chunk
    it would have denoised alone (a replayed step pads to the same batch width)."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from dpft.finetune.dsrl.noise_env import NoiseVecEnv

    base = load_policy(base_dir)
    new_env = lambda: NoiseActionEnv(ChunkedEnv(make(TASK), 1, 8, 4), base, 1.5, distill_samples=3)  # noqa: E731
    batched, alone = NoiseVecEnv(DummyVecEnv([new_env] * 3)), [new_env() for _ in range(3)]
    batched.seed(5)
    batched.reset()
    for i, env in enumerate(alone):
        env.batch_width = 3 * 4
        env.reset(seed=5 + i)
    calls = []
    real = base.predict_chunk
    base.predict_chunk = lambda *a, **k: calls.append(len(a[0])) or real(*a, **k)
    try:
        rng = np.random.default_rng(0)
        for _ in range(2):  # one episode: two chunks
            actions = rng.uniform(-1.5, 1.5, (3, 16)).astype(np.float32)
            obs, _, _, infos = batched.step(actions)
            for i, env in enumerate(alone):
                o, _, term, trunc, info = env.step(actions[i])
                np.testing.assert_array_equal(info["executed_chunk"], infos[i]["executed_chunk"])
                np.testing.assert_array_equal(info["distill_chunk"], infos[i]["distill_chunk"])
                if not (term or trunc):
                    np.testing.assert_array_equal(o.reshape(-1), obs[i])
    finally:
        base.predict_chunk = real
    assert calls[:1] == [12] and all(c == 12 for c in calls)


class IgnoresNoise(Policy):
    """The bimodal base fed zero noise whatever it is given: a policy DSRL cannot steer."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        for name in ("obs_dim", "action_dim", "obs_horizon", "pred_horizon", "action_horizon"):
            setattr(self, name, getattr(base, name))

    def predict_chunk(self, obs, noise=None, generator=None):
        obs = self.base.obs_history(obs)
        return self.base.predict_chunk(obs, torch.zeros(len(obs), *self.noise_shape))

    def save(self, path):
        raise NotImplementedError


def test_steerability_sees_room_where_the_noise_picks_the_mode_and_none_where_it_is_ignored(base_dir):
    from dpft.finetune.commands.steerability import outcomes, summarise

    base = load_policy(base_dir)
    cfg = EnvConfig(task=TASK, envs=8, seed=2000)
    steerable = summarise(outcomes(base, cfg, 40, 6), by_success=True, room=0.15)
    # the base goes right (the successful side) in ~30% of episodes, by its noise alone
    assert steerable["base_success"] < 0.5 and steerable["best_of_k_success"] >= steerable["base_success"] + 0.3
    assert steerable["noise_sensitive_states"] > 0.5 and steerable["dsrl_has_room"]
    assert steerable["reading"].startswith("DSRL has room")
    fixed = summarise(outcomes(IgnoresNoise(base), cfg, 40, 6), by_success=True, room=0.15)
    assert fixed["best_of_k_success"] == fixed["base_success"] == fixed["zero_noise_success"]
    assert fixed["noise_sensitive_states"] == 0 and not fixed["dsrl_has_room"]
    assert "consider a residual policy" in fixed["reading"]


def test_steerability_counts_the_zero_noise_as_a_choice():
    """A base whose zero noise is far better than any random stream (HalfCheetah medium: +37%
    against best-of-8's +15%) has room: a noise policy can pick the zero noise everywhere; the
    reading names it, since evaluating with zero noise costs no training."""
    from dpft.finetune.commands.steerability import summarise

    rng = np.random.default_rng(0)
    streams = 1000 + 50 * rng.standard_normal((8, 40))  # best-of-8 ~ +10%, below the 15% rule
    o = {
        "success": np.zeros((8, 40)),
        "return": streams,
        "zero_success": np.zeros(40),
        "zero_return": np.full(40, 1400.0),
    }
    out = summarise(o, by_success=False, room=0.15)
    assert out["best_of_k_return"] < 1.15 * out["base_return"] and out["dsrl_has_room"]
    assert "zero noise 1400.0 (+40%)" in out["reading"] and "dpft eval --zero-noise" in out["reading"]
    o["zero_return"] = np.full(40, 1000.0)
    out = summarise(o, by_success=False, room=0.15)
    assert not out["dsrl_has_room"] and "zero noise" not in out["reading"]


def test_steerability_command(base_dir, capsys):
    args = ["steerability", "--policy", str(base_dir), "--states", "16", "--streams", "3", "--envs", "8"]
    assert cli.main([*args, "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["task"] == TASK and out["states"] == 16 and out["streams"] == 3
    assert 0 <= out["spread_ratio"] and len(out["best_of_k_success_ci95"]) == 2
    assert cli.main([*args, "--streams", "1"]) == 2  # one stream has no best-of-K


@pytest.mark.slow
def test_the_temperature_is_measured_in_the_critics_units(tmp_path, base_dir):
    """The same run with the reward times 100: with the scaled temperature the noise stays as
    close to N(0, I) as with the reward as it is; with the raw temperature the KL term is 100x
    weaker next to Q, and the noise leaves the base's noise further."""

    def kl_after(reward: str | None, scaled: bool, name: str) -> tuple[float, float]:
        cfg = quick(tmp_path / name, base_dir, task=TASK, reward=reward, q_scaled_temperature=scaled, steps=1600)
        base = load_policy(base_dir)
        venv = make_vec_env(cfg, lambda: DSRL().make_env(cfg, base))
        model = DSRL().new_model(cfg, base, venv)
        model.learn(cfg.steps // base.action_horizon)
        obs = torch.as_tensor(np.stack([model.replay_buffer.observations[i, 0] for i in range(50)]))
        w, log_prob = model.actor.action_log_prob(obs)
        return float(model._regulariser(w, log_prob, 1.5).mean().detach()), model.q_scale

    torch.manual_seed(0)
    plain, scale_plain = kl_after(None, True, "plain")
    scaled, scale_100 = kl_after("scale(scale=100)", True, "scaled")
    raw, _ = kl_after("scale(scale=100)", False, "raw")
    print(
        f"KL plain {plain:.1f}, x100 scaled {scaled:.1f}, x100 raw {raw:.1f}; "
        f"q_scale {scale_plain:.1f} / {scale_100:.1f}"
    )
    assert scale_100 > 5 * scale_plain, (scale_plain, scale_100)
    assert scaled < 2.5 * plain and scaled < 0.6 * raw, (plain, scaled, raw)  # measured: 20.6, 41.1, 97.6


@pytest.mark.parametrize("variant", ["na", "sac"])
def test_critic_warmup_trains_the_critics_only_and_keeps_the_base_noise(tmp_path, base_dir, variant):
    """--critic-warmup-steps: after the warm-up the critics learn while the actor and the
    temperature stay as they were and the rollouts keep drawing N(0, I); after it, both move."""
    cfg = quick(tmp_path, base_dir, variant=variant, task=TASK, critic_warmup_steps=400, steps=2400)
    base = load_policy(base_dir)
    venv = make_vec_env(cfg, lambda: DSRL().make_env(cfg, base))
    model = DSRL().new_model(cfg, base, venv)
    k = base.action_horizon
    assert (model.critic_warmup, model.explore_after) == (400 // k, (400 + 400) // k)
    snapshot = lambda net: {n: p.detach().clone() for n, p in net.state_dict().items()}  # noqa: E731
    actor0, critic0 = snapshot(model.actor), snapshot(model.critic)
    alpha0 = float(model.log_ent_coef.detach().exp())

    model.learn(model.explore_after)  # warm-up, then exactly the critic warm-up
    assert model._n_updates == model.critic_warmup
    assert all(torch.equal(p, actor0[n]) for n, p in model.actor.state_dict().items()), "the actor waits"
    assert float(model.log_ent_coef.detach().exp()) == pytest.approx(alpha0), "the temperature waits"
    assert any(not torch.equal(p, critic0[n]) for n, p in model.critic.state_dict().items())
    if variant == "na":
        assert any(p.grad is not None for p in model.action_critic.parameters())
    # every stored noise so far is the base's own, N(0, I) clipped to the bound: 13% of the
    # coordinates sit exactly on it (P(|z| > 1.5)), which the actor's tanh-squashed samples never do
    on_bound = lambda w: np.mean(np.abs(w * cfg.action_magnitude) >= cfg.action_magnitude - 1e-6)  # noqa: E731
    assert 0.08 < on_bound(model.replay_buffer.actions[: model.explore_after, 0]) < 0.19

    model.learn(10, reset_num_timesteps=False)
    assert any(not torch.equal(p, actor0[n]) for n, p in model.actor.state_dict().items()), "then it learns"
    assert on_bound(model.replay_buffer.actions[model.explore_after : model.explore_after + 10, 0]) == 0

    resumed_kwargs = DSRL().load_kwargs(cfg, base)
    assert (resumed_kwargs["critic_warmup"], resumed_kwargs["explore_after"]) == (400 // k, 800 // k)


def _scores(successes: int, n: int = 30) -> dict:
    lo, hi = wilson_interval(successes, n)
    return {"success_rate": successes / n, "success_ci95": [lo, hi], "return_mean": float(successes), "episodes": n}


def test_the_guard_deploys_only_what_beats_the_base_with_confidence(tmp_path, base_dir):
    """--final guarded: a candidate must beat the base's validation score with 95% confidence and
    be no worse than the deployed one; a resumed run forgets deployments after its checkpoint."""
    base = load_policy(base_dir)
    guard = Guard(tmp_path)
    guard.start(base, validate=lambda p: _scores(18), evaluate=lambda p: _scores(17), env_steps=0)  # base 0.60
    assert guard.deployed["env_steps"] == 0 and guard.deployed_policy_dir() is None
    assert guard.offer(base, _scores(30), _scores(22), 100)["env_steps"] == 0  # 0.73 with interval down to 0.56
    assert guard.offer(base, _scores(9), _scores(27), 200) == {  # 0.90, interval down to 0.74: deployed
        "success_rate": 0.3,
        "return_mean": 9.0,
        "episodes": 30,
        "env_steps": 200,
        "val": 0.9,
    }  # the deployed curve reports its evaluation-episode score, whatever the validation said
    assert guard.offer(base, _scores(30), _scores(25), 300)["env_steps"] == 200  # beats the base, not 0.90
    assert guard.offer(base, _scores(30), _scores(28), 400)["env_steps"] == 400
    assert (tmp_path / "guarded" / "400" / "config.json").exists()

    again = Guard(tmp_path)  # resumed from a checkpoint at 300
    again.start(base, validate=lambda p: _scores(18), evaluate=lambda p: _scores(17), env_steps=300)
    assert again.deployed["env_steps"] == 200 and not (tmp_path / "guarded" / "400").exists()
    assert again.deployed_policy_dir() == tmp_path / "guarded" / "200"


def test_the_guard_does_not_deploy_a_tie_at_zero(tmp_path, base_dir):
    """A base that fails all its validation episodes is not replaced by a policy that fails them too."""
    base = load_policy(base_dir)
    guard = Guard(tmp_path)
    guard.start(base, validate=lambda p: _scores(0), evaluate=lambda p: _scores(0), env_steps=0)
    assert guard.offer(base, _scores(0), _scores(0), 100)["env_steps"] == 0
    assert guard.offer(base, _scores(3), _scores(3), 200)["env_steps"] == 200  # 0.10, interval down to 0.03


@pytest.mark.slow
@pytest.mark.parametrize("outcome", ["fine-tuned", "base"])
def test_final_guarded_deploys_the_validated_policy_or_keeps_the_base(tmp_path, base_dir, monkeypatch, outcome):
    """The run's policy/ is the deployed policy, which is the base itself when nothing passed;
    evals.jsonl and final_eval.json say which, with the validation scores beside the evaluation."""
    if outcome == "base":
        monkeypatch.setattr(Guard, "passes", lambda self, val: False)
    out = train_dsrl(
        quick(tmp_path, base_dir, final="guarded", eval_every=800, eval_episodes=20, validation_episodes=24)
    )
    run = tmp_path / "dsrl"
    evals = [json.loads(x) for x in (run / "evals.jsonl").read_text().splitlines()]
    final = json.loads((run / "final_eval.json").read_text())
    record = json.loads((run / "guarded.json").read_text())
    assert len(evals) == 3 and all({"validation", "deployed"} <= set(e) for e in evals)
    assert final["final"] == "guarded" and final["deployed"] == outcome and "last" in final
    assert record["base"]["val"]["episodes"] == 24 and record["base"]["eval"]["episodes"] == 20
    assert final["validation"]["episodes"] == 24 and all(e["validation"]["episodes"] == 24 for e in evals)
    if outcome == "base":
        assert record["deployments"] == [] and final["policy_env_steps"] == 0
        assert json.loads((out / "config.json").read_text())["type"] != "dsrl"
        assert final["success_rate"] == record["base"]["eval"]["success_rate"]
        assert all(e["deployed"]["env_steps"] == 0 for e in evals)
    else:  # the toy base mostly fails and DSRL learns to steer it: a policy passes
        steps = record["deployments"][-1]["env_steps"]
        assert final["policy_env_steps"] == steps and final["validation"]["success_rate"] > 0.5
        kept = (run / "guarded" / str(steps) / "model.safetensors").read_bytes()
        assert (out / "model.safetensors").read_bytes() == kept


@pytest.mark.parametrize("variant", ["na", "sac"])
def test_actor_ema_is_the_policy_and_actor_lr_paces_the_actor_alone(tmp_path, base_dir, variant):
    """--actor-ema D: after each gradient step the average moves (1 - D) of the way to the actor;
    the saved and evaluated policy is the average, not the actor; it survives a checkpoint round
    trip. --actor-lr: the actor's optimiser runs at its own rate, the critics at --lr."""
    cfg = quick(tmp_path, base_dir, variant=variant, task=TASK, actor_ema=0.9, actor_lr=1e-4, steps=800)
    base = load_policy(base_dir)
    venv = make_vec_env(cfg, lambda: DSRL().make_env(cfg, base))
    model = DSRL().new_model(cfg, base, venv)
    model.learn(model.learning_starts)  # the warm-up: no gradient step yet
    assert model._n_updates == 0
    params = lambda net: [p.detach().clone() for p in net.parameters()]  # noqa: E731
    shadow0, actor0 = params(model.policy.actor_ema), params(model.actor)
    assert all(torch.equal(s, a) for s, a in zip(shadow0, actor0)), "the average starts at the actor"
    model.learn(1, reset_num_timesteps=False)  # one transition, one gradient step
    assert model._n_updates == 1
    shadow1, actor1 = params(model.policy.actor_ema), params(model.actor)
    assert any(not torch.equal(a, b) for a, b in zip(actor0, actor1))
    for s0, s1, a1 in zip(shadow0, shadow1, actor1):
        torch.testing.assert_close(s1, 0.9 * s0 + 0.1 * a1)
    assert model.actor.optimizer.param_groups[0]["lr"] == 1e-4
    assert model.critic.optimizer.param_groups[0]["lr"] == cfg.lr

    obs = torch.as_tensor(venv.reset(), dtype=torch.float32)
    policy = DSRL().artifact(model, base, cfg)
    with torch.no_grad():
        expected = model.policy.actor_ema(obs, deterministic=True)
        assert not torch.allclose(expected, model.actor(obs, deterministic=True))
        torch.testing.assert_close(policy.actor(obs), expected)

    save_sb3_checkpoint(model, tmp_path / "ck", {})
    loaded = load_sb3_checkpoint(DSRL().algorithm(cfg), tmp_path / "ck", venv, **DSRL().load_kwargs(cfg, base))[0]
    assert all(torch.equal(a, b) for a, b in zip(params(loaded.policy.actor_ema), shadow1))
    assert loaded.actor_lr == 1e-4 and loaded.actor_ema == 0.9


@pytest.mark.parametrize("mode", ["sampled", "mean"])
def test_noise_mode_decides_what_the_saved_policy_draws(tmp_path, base_dir, mode):
    """sampled: each call without noise is a seeded draw of the actor's distribution, the same
    as passing that N(0, I) draw as noise; mean: the actor's mean noise, whatever the generator.
    The mode survives save/load, and an artifact from before the key loads as mean."""
    from dpft.base_policies.sb3_actor import SquashedMeanActor
    from dpft.finetune.dsrl.steered import SteeredPolicy

    base = load_policy(base_dir)
    torch.manual_seed(0)
    actor = SquashedMeanActor(base.obs_horizon * base.obs_dim, [16], math.prod(base.noise_shape))
    meta = {"action_magnitude": 1.5, "hidden": [16], "noise_mode": mode}
    policy = SteeredPolicy(base, actor, meta)
    obs = torch.randn(5, base.obs_horizon, base.obs_dim)
    draw = lambda seed: policy.predict_chunk(obs, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    mean = base.predict_chunk(obs, policy.noise_for(obs))
    assert policy.chooses_noise == (mode == "mean")
    if mode == "sampled":
        eps = base.initial_noise(5, torch.Generator().manual_seed(1))
        assert torch.equal(draw(1), policy.predict_chunk(obs, eps)) and torch.equal(draw(1), draw(1))
        assert not torch.allclose(draw(1), draw(2)) and not torch.allclose(draw(1), mean)
    else:
        assert torch.equal(draw(1), mean) and torch.equal(draw(2), mean)

    policy.save(tmp_path / "p")
    assert load_policy(tmp_path / "p").noise_mode == mode
    old = json.loads((tmp_path / "p" / "config.json").read_text())
    del old["noise_mode"]
    (tmp_path / "p" / "config.json").write_text(json.dumps(old))
    assert load_policy(tmp_path / "p").noise_mode == "mean"
    assert DSRLConfig(noise_mode=mode).noise_mode == mode
    with pytest.raises(ConfigError, match="--noise-mode"):
        DSRLConfig(noise_mode="median")


@pytest.mark.slow
def test_compare_noise_modes_records_the_other_mode_beside_each_evaluation(tmp_path, base_dir):
    """--compare-noise-modes: each evals.jsonl row also holds the other mode's scores on the same
    episodes; the saved policy keeps the chosen mode."""
    from dpft.finetune.common.eval_log import read_evals

    cfg = quick(tmp_path, base_dir, task=TASK, steps=1200, eval_every=1200, eval_episodes=10)
    cfg = DSRLConfig(**{**vars(cfg), "noise_mode": "sampled", "compare_noise_modes": True})
    out = train_dsrl(cfg)
    rows = read_evals(cfg.out / "evals.jsonl")
    assert rows and all(set(r["also_noise_mode_mean"]) == {"success_rate", "return_mean", "episodes"} for r in rows)
    assert all(r["also_noise_mode_mean"]["episodes"] == 10 for r in rows)
    assert load_policy(out).noise_mode == "sampled"


def test_eval_noise_mode_overrides_the_saved_mode(tmp_path, base_dir, capsys):
    """`dpft eval --noise-mode`: a mean-mode policy evaluated with sampled noise scores what the
    same policy saved as sampled does, and the JSON says which mode ran."""
    from dpft.base_policies.sb3_actor import SquashedMeanActor
    from dpft.finetune.dsrl.steered import SteeredPolicy

    base = load_policy(base_dir)
    torch.manual_seed(0)
    actor = SquashedMeanActor(base.obs_horizon * base.obs_dim, [16], math.prod(base.noise_shape))
    for mode in ("mean", "sampled"):
        SteeredPolicy(base, actor, {"action_magnitude": 1.5, "hidden": [16], "noise_mode": mode}).save(tmp_path / mode)
    runs = {}
    for folder, flags in (("mean", []), ("mean", ["--noise-mode", "sampled"]), ("sampled", [])):
        args = ["eval", "--policy", str(tmp_path / folder), "--task", TASK, "--episodes", "4", "--json", *flags]
        assert cli.main([*args, "--no-progress"]) == 0
        runs[(folder, *flags)] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert runs[("mean",)]["noise_mode"] == "mean"
    overridden, saved = runs[("mean", "--noise-mode", "sampled")], runs[("sampled",)]
    assert overridden["noise_mode"] == "sampled" and overridden["return_mean"] == saved["return_mean"]
    assert cli.main(["eval", "--policy", str(tmp_path / "mean"), "--task", TASK, "--noise-mode", "median"]) == 2
    assert "choose one of ['sampled', 'mean']" in capsys.readouterr().err
