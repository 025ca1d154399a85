"""Residual policies: a learned, bounded correction on top of a frozen base."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from conftest import StopAt
from stable_baselines3.common.vec_env import DummyVecEnv
from synthetic import offset_reach_episodes

from dpft.base_policies import ArchConfig, PolicyConfig, load_policy
from dpft.base_policies.data import write_robomimic_hdf5
from dpft.base_policies.infra.interrupt import RunInterrupted
from dpft.base_policies.policy import policy_type
from dpft.base_policies.sb3_actor import SquashedMeanActor
from dpft.base_policies.train_bc import TrainBCConfig, train_bc
from dpft.base_policies.zero_noise import ZeroNoisePolicy
from dpft.envs.chunking import ChunkedEnv
from dpft.envs.config import EnvConfig
from dpft.envs.episode_replay import ReplayableEpisodes
from dpft.envs.tasks import make
from dpft.finetune.commands import cli
from dpft.finetune.common.best import BestPolicy, score
from dpft.finetune.common.policy_eval import evaluate
from dpft.finetune.common.rollout import policy_chunk_fn, run_episodes
from dpft.finetune.common.run import run_sb3
from dpft.finetune.dsrl.steered import SteeredPolicy
from dpft.finetune.residual.env import ResidualVecEnv, noise_rng
from dpft.finetune.residual.policy import Features, ResidualNet, ResidualPolicy
from dpft.finetune.residual.train import PPOOptions, Residual, ResidualConfig, TD3Options, train_residual

TASK = "toy_envs:Reach-v0"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A diffusion policy that aims 0.4 above the goal of Reach-v0 (a constant offset)."""
    d = tmp_path_factory.mktemp("reach")
    write_robomimic_hdf5(d / "demos.hdf5", offset_reach_episodes(200), {"task": TASK})
    arch = ArchConfig(obs_horizon=1, pred_horizon=4, action_horizon=4, hidden_dim=64, num_blocks=1)
    cfg = TrainBCConfig(
        dataset=d / "demos.hdf5", out=d / "bc", arch=arch, steps=600, lr=1e-3, warmup_steps=50,
        checkpoint_every=10**9, progress=False,
    )  # fmt: skip
    return train_bc(cfg)


def quick(tmp_path, base, **kw) -> ResidualConfig:
    defaults = dict(
        base=str(base), out=tmp_path / "res", steps=1500, warmup_steps=200, critic_warmup_steps=200,
        explore_ramp_steps=400, residual_scale=0.5, hidden=64, batch_size=128, eval_every=10**9,
        eval_episodes=50, checkpoint_every=10**9, progress=False, ppo=PPOOptions(rollout_steps=64),
        reward="dense", final="last", n_step=1,  # what these tests were built on (presets: test_presets.py)
    )  # fmt: skip
    return ResidualConfig(**{**defaults, **kw})


def random_net(base, form: str, low=-1.0, high=1.0, seed=0) -> ResidualNet:
    """A residual net whose output layer is NOT zero (so the correction matters)."""
    h = 1 if form == "step" else base.action_horizon
    lo, hi = torch.full((base.action_dim,), low), torch.full((base.action_dim,), high)
    net = ResidualNet(
        Features.for_base(base, lo, hi), base.obs_horizon * base.obs_dim + h * base.action_dim,
        [32], h * base.action_dim, "relu", "tanh",
    )  # fmt: skip
    torch.manual_seed(seed)
    torch.nn.init.normal_(net.head.weight, std=1.0)
    return net


def bounded_base(pred=8, action=4):
    """A tiny untrained diffusion policy whose actions are clipped to [-1, 1] (the task bounds)."""
    torch.manual_seed(0)
    arch = ArchConfig(obs_horizon=2, pred_horizon=pred, action_horizon=action, hidden_dim=32, num_blocks=1)
    cfg = PolicyConfig(
        type="diffusion", backbone="mlp", obs_dim=5, action_dim=3, arch=arch,
        action_low=(-1.0,) * 3, action_high=(1.0,) * 3,
    )  # fmt: skip
    return policy_type("diffusion")(cfg).eval()


# ----- step 0 is the base ------------------------------------------------------------------
@pytest.mark.parametrize("form", ["step", "chunk"])
def test_fresh_residual_reproduces_the_base_bit_for_bit(form):
    base = bounded_base()
    net = random_net(base, form)
    torch.nn.init.zeros_(net.head.weight)  # what a fresh residual's head is (tested below for SB3 too)
    policy = ResidualPolicy(base, net, {"form": form, "scale": 0.5})
    obs, noise = torch.randn(3, 2, 5), torch.randn(3, *base.noise_shape)
    expected = base.predict_chunk(obs, noise)
    if form == "chunk":
        assert torch.equal(policy.predict_chunk(obs, noise), expected)
        return
    assert policy.pred_horizon == policy.action_horizon == 1 and policy.noise_shape == base.noise_shape
    policy.reset()
    for t in range(base.action_horizon):  # later observations do not matter inside a chunk
        assert torch.equal(policy.predict_chunk(obs if t == 0 else torch.randn(3, 2, 5), noise)[:, 0], expected[:, t])


@pytest.mark.parametrize("algo", ["sac", "td3", "ppo"])
@pytest.mark.parametrize("form", ["step", "chunk"])
def test_untrained_sb3_residual_is_the_base(tmp_path, base_dir, algo, form):
    """The SB3 model's deterministic action is exactly 0 at step 0, so the artifact is the base."""
    cfg = quick(tmp_path, base_dir, algo=algo, form=form, envs=2)
    method = Residual()
    base = load_policy(base_dir)
    cfg.task = TASK
    venv = method.wrap_vec_env(cfg, base, DummyVecEnv([lambda: method.make_env(cfg, base)] * 2))
    model = method.new_model(cfg, base, venv)
    obs = venv.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert np.array_equal(action, np.zeros_like(action))
    artifact = method.artifact(model, base, cfg)
    x, noise = torch.randn(4, 1, 2), torch.randn(4, *base.noise_shape)
    got = artifact.predict_chunk(x, noise)
    assert torch.equal(got[:, 0], base.predict_chunk(x, noise)[:, 0])


# ----- the correction ------------------------------------------------------------------------
def test_correction_is_bounded_and_clipped_to_the_action_range():
    base = bounded_base()
    policy = ResidualPolicy(base, random_net(base, "chunk"), {"form": "chunk", "scale": 0.2})
    obs, noise = torch.randn(64, 2, 5), torch.randn(64, *base.noise_shape)
    a_base, a = base.predict_chunk(obs, noise)[:, :4], policy.predict_chunk(obs, noise)[:, :4]
    assert (a - a_base).abs().max() <= 0.2 * 1.0 + 1e-6  # scale * half range
    assert a.min() >= -1 and a.max() <= 1
    assert (a - a_base).abs().max() > 0.05  # the random residual does correct


# ----- episodes ending at different steps -------------------------------------------------------
def test_stateful_residual_in_a_vector_env_with_episodes_of_different_lengths(base_dir):
    """Row i of a per-step residual starts afresh exactly when env i starts a new episode: env 0
    of a 3-env evaluation matches episodes run one by one with a freshly reset policy."""
    base = load_policy(base_dir)
    policy = ResidualPolicy(base, random_net(base, "step", seed=3), {"form": "step", "scale": 0.3})
    venv = EnvConfig(task=TASK, envs=3, seed=7).make_vector(1, 1, 1)
    results = run_episodes(policy_chunk_fn(policy, zero_noise=True), venv, 12, seed=7)
    assert len({r.length for r in results}) > 1  # episodes really end at different steps
    assert any(r.length % base.action_horizon for r in results)  # ... and inside a base chunk
    env = ChunkedEnv(make(TASK), 1, 1, 1)  # env 0 alone: seeded once, then reset unseeded
    for k, r in enumerate(x for x in results if x.env_index == 0):
        obs, _ = env.reset(seed=7 if k == 0 else None)
        policy.reset()
        total, steps, done = 0.0, 0, False
        while not done:
            a = policy.predict_chunk(torch.as_tensor(obs)[None], torch.zeros(1, *base.noise_shape))[0]
            obs, reward, term, trunc, _ = env.step(a.numpy())
            total, steps, done = total + reward, steps + 1, term or trunc
        assert r.length == steps and r.episode_return == pytest.approx(total, abs=1e-4)


class Trace(gym.Wrapper):
    """Records every action the task receives, and marks episode starts with None."""

    def __init__(self, env, log: list) -> None:
        super().__init__(env)
        self.log = log

    def reset(self, **kw):
        self.log.append(None)
        return self.env.reset(**kw)

    def step(self, action):
        self.log.append(np.array(action, copy=True))
        return self.env.step(action)


def test_training_env_runs_each_env_as_if_alone(base_dir):
    """With r = 0, env 0 of the training wrapper executes the base exactly as a by-hand chunked
    run with env 0's noise stream does, whether or not another env (ending its episodes at other
    steps) shares the vector: chunks restart at env 0's own episode ends and nowhere else."""
    base = load_policy(base_dir)
    lo, hi = torch.full((2,), -1.0), torch.full((2,), 1.0)
    steps = 60

    def executed(n_envs: int) -> list:
        log: list = []
        fns = [lambda: ReplayableEpisodes(ChunkedEnv(Trace(make(TASK), log), 1, 1, 1))]
        fns += [lambda: ReplayableEpisodes(ChunkedEnv(make(TASK), 1, 1, 1))] * (n_envs - 1)
        inner = DummyVecEnv(fns)
        inner.seed(11)
        venv = ResidualVecEnv(inner, base, "step", 0.3, Features.for_base(base, lo, hi), seed=5)
        venv.reset()
        for _ in range(steps):
            venv.step(np.zeros((n_envs, 2), np.float32))
        return log

    # by hand: env 0's episodes (ReplayableEpisodes seeds), chunks of 4 from env 0's noise stream
    rng, log = noise_rng(5, 0), []
    env = ReplayableEpisodes(ChunkedEnv(Trace(make(TASK), log), 1, 4, 4))
    obs, ends = env.reset(seed=11)[0], 0
    while sum(a is not None for a in log) < steps:
        noise = torch.as_tensor(rng.standard_normal(base.noise_shape, dtype=np.float32))[None]
        obs, _, term, trunc, _ = env.step(base.predict_chunk(torch.as_tensor(obs)[None], noise)[0].numpy())
        if term or trunc:
            obs, ends = env.reset()[0], ends + 1
    assert ends >= 3 and any(len(list(g)) % 4 for _, g in _episodes(log))  # episodes end inside chunks
    for n_envs in (1, 2):
        got = executed(n_envs)
        n = len(got)
        assert [a is None for a in got] == [a is None for a in log[:n]]
        # equal up to float32 rounding: a base call batches different rows in each run
        assert all(a is None or np.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(got, log[:n]))


def _episodes(log: list):
    import itertools

    return itertools.groupby((a for a in log), key=lambda a: a is None)


# ----- learning ------------------------------------------------------------------------------------
def best_of_noise_streams(policy, streams: int = 16, episodes: int = 16) -> float:
    """Share of start states that ANY of ``streams`` noise streams solves (what steering could reach)."""
    solved = np.zeros(episodes, bool)
    for s in range(streams):
        venv = EnvConfig(task=TASK, envs=8, seed=100).make_vector(policy.obs_horizon, policy.pred_horizon, 4)
        fn = policy_chunk_fn(policy, torch.Generator().manual_seed(s))
        solved |= np.array([r.success for r in run_episodes(fn, venv, episodes, seed=100)])
    return float(solved.mean())


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_residual_fixes_a_constant_offset_that_no_noise_can(tmp_path, base_dir, algo):
    base = load_policy(base_dir)
    assert best_of_noise_streams(base) == 0.0  # no initial noise reaches the goal: DSRL has no room
    kw = {"steps": 2500} if algo == "sac" else {"steps": 6000, "envs": 4, "batch_size": 64}
    policy = load_policy(train_residual(quick(tmp_path, base_dir, algo=algo, **kw)))
    assert isinstance(policy, ResidualPolicy) and policy.form == "step"
    assert evaluate(policy, EnvConfig(task=TASK, envs=8, seed=3), 50)["success_rate"] >= 0.8


# ----- artifact, resume, DSRL base ------------------------------------------------------------------------
def test_artifact_round_trip_and_dpft_eval(tmp_path, base_dir, capsys):
    out = train_residual(quick(tmp_path, base_dir, steps=600, form="chunk", algo="td3"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["type"] == "residual" and cfg["form"] == "chunk" and cfg["base"] == {"folder": "base"}
    a, b = load_policy(out), load_policy(out)
    x, noise = torch.randn(5, 2), torch.randn(5, *a.noise_shape)
    assert torch.equal(a.predict_chunk(x, noise), b.predict_chunk(x, noise))
    assert cli.main(["eval", "--policy", str(tmp_path / "res"), "--episodes", "8", "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["task"] == TASK and summary["episodes"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_interrupted_run_resumes_exactly(tmp_path, base_dir, algo):
    """Stopped mid-episode and resumed: the same weights as a run that was never stopped."""
    kw = dict(algo=algo, steps=900, checkpoint_every=10**9, envs=2)
    kw |= {"batch_size": 32, "ppo": PPOOptions(rollout_steps=64)} if algo == "ppo" else {}
    whole = load_policy(train_residual(quick(tmp_path / "whole", base_dir, **kw)))
    cfg = quick(tmp_path / "cut", base_dir, **kw)
    method = Residual()
    stop = 2 * 64 * 3 + 10 if algo == "ppo" else 502  # mid-rollout / mid-episode
    method.callbacks = lambda c, m, b, k, orig=method.callbacks: [*orig(c, m, b, k), StopAt(stop, k)]
    with pytest.raises(RunInterrupted):
        run_sb3(cfg, method)
    cfg.resume = True
    resumed = load_policy(train_residual(cfg))
    for (name, p), q in zip(whole.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(p, q), name
    finals = [json.loads((tmp_path / r / "res" / "final_eval.json").read_text()) for r in ("whole", "cut")]
    assert finals[0]["env_steps"] >= 900 and finals[0]["return_mean"] == finals[1]["return_mean"]
    assert finals[0]["env_steps"] == finals[1]["env_steps"]


def test_residual_on_top_of_a_steered_policy(tmp_path, base_dir):
    """With a DSRL policy as --base, the base's noise is the steered policy's own choice."""
    base = load_policy(base_dir)
    torch.manual_seed(0)
    actor = SquashedMeanActor(base.obs_dim, [16], base.pred_horizon * base.action_dim)
    steered = SteeredPolicy(base, actor, {"action_magnitude": 1.5, "task": TASK})
    steered.save(tmp_path / "steered")
    out = train_residual(quick(tmp_path, tmp_path / "steered", steps=300, warmup_steps=100, critic_warmup_steps=100))
    policy = load_policy(out)
    assert isinstance(policy.base, SteeredPolicy)
    torch.nn.init.zeros_(policy.learned.head.weight)  # no correction: what runs is the steered base alone
    torch.nn.init.zeros_(policy.learned.head.bias)
    x = torch.randn(6, 2)
    policy.reset()
    first = policy.predict_chunk(x)[:, 0]  # no noise given: the steered policy's mean noise
    assert torch.equal(first, steered.predict_chunk(x)[:, 0])
    summary = evaluate(policy, EnvConfig(task=TASK, envs=4, seed=0), 8)
    assert summary["episodes"] == 8
    # the training env, too, leaves the noise to the steered policy
    inner = DummyVecEnv([lambda: ReplayableEpisodes(ChunkedEnv(make(TASK), 1, 1, 1))] * 2)
    inner.seed(3)
    lo, hi = torch.full((2,), -1.0), torch.full((2,), 1.0)
    venv = ResidualVecEnv(inner, steered, "step", 0.3, Features.for_base(steered, lo, hi), seed=0)
    obs = venv.reset()
    start = np.stack([e.unwrapped.pos for e in inner.envs])
    venv.step(np.zeros((2, 2), np.float32))
    expected = steered.predict_chunk(torch.as_tensor(start)[:, None])[:, 0].numpy()
    assert np.allclose(np.stack([e._actions[0][0] for e in inner.envs]), expected, atol=1e-6)
    assert obs.shape == (2, 2 + 2)


def test_residual_on_the_base_s_mode(tmp_path, base_dir, capsys):
    """--base-noise zero: the residual corrects the base's zero-noise chunks, in training and in
    the saved artifact (whatever noise a caller passes), and the artifact loads and evaluates."""
    base = load_policy(base_dir)
    out = train_residual(
        quick(tmp_path, base_dir, steps=300, warmup_steps=100, critic_warmup_steps=100, base_noise="zero")
    )
    assert yaml.safe_load((tmp_path / "res" / "config.yaml").read_text())["base_noise"] == "zero"
    policy = load_policy(out)
    assert isinstance(policy.base, ZeroNoisePolicy) and policy.chooses_noise
    assert json.loads((out / "base" / "config.json").read_text())["type"] == "zero-noise"
    torch.nn.init.zeros_(policy.learned.head.weight)
    torch.nn.init.zeros_(policy.learned.head.bias)
    x = torch.randn(6, 2)
    mode = base.predict_chunk(x, torch.zeros(6, *base.noise_shape))[:, 0]
    policy.reset()
    assert torch.equal(policy.predict_chunk(x)[:, 0], mode)
    policy.reset()
    assert torch.equal(policy.predict_chunk(x, torch.randn(6, *base.noise_shape))[:, 0], mode)
    # the training env executes the mode too
    inner = DummyVecEnv([lambda: ReplayableEpisodes(ChunkedEnv(make(TASK), 1, 1, 1))] * 2)
    inner.seed(3)
    lo, hi = torch.full((2,), -1.0), torch.full((2,), 1.0)
    zero = ZeroNoisePolicy(base)
    venv = ResidualVecEnv(inner, zero, "step", 0.3, Features.for_base(zero, lo, hi), seed=0)
    venv.reset()
    start = np.stack([e.unwrapped.pos for e in inner.envs])
    venv.step(np.zeros((2, 2), np.float32))
    z = torch.zeros(2, *base.noise_shape)
    expected = base.predict_chunk(torch.as_tensor(start)[:, None], z)[:, 0].numpy()
    assert np.allclose(np.stack([e._actions[0][0] for e in inner.envs]), expected, atol=1e-6)
    assert cli.main(["eval", "--policy", str(out), "--episodes", "4", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == 4


# ----- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--residual-scale", "0"], "--residual-scale must be in (0, 1], got 0.0"),
        (["--residual-scale", "1.5"], "must be in (0, 1]"),
        (["--algo", "ddpg"], "unknown --algo 'ddpg'"),
        (["--form", "episode"], "unknown --form 'episode'"),
        (["--base-noise", "uniform"], "unknown --base-noise 'uniform'"),
        (["--task", "toy_envs:Obstacle-v0", "--base", "shipped:metaworld-push-v3"], "observations of size 39"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, base_dir, capsys, flags, message):
    argv = ["finetune", "residual", "--base", str(base_dir), "--out", str(tmp_path / "r"), "--no-progress", *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1


def test_a_per_step_residual_cannot_be_a_frozen_base(tmp_path, base_dir, capsys):
    base = load_policy(base_dir)
    ResidualPolicy(base, random_net(base, "step"), {"form": "step", "scale": 0.3, "task": TASK}).save(tmp_path / "p")
    for method in ("dsrl", "residual"):
        argv = ["finetune", method, "--base", str(tmp_path / "p"), "--out", str(tmp_path / method), "--no-progress"]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "is a stateful policy" in err and len(err.splitlines()) == 1


def test_mode_noise_on_a_base_that_picks_its_own_noise_is_refused(tmp_path, base_dir, capsys):
    """--base-noise zero has nothing to set on a DSRL (or zero-noise) base: one line, not a silent no-op."""
    ZeroNoisePolicy(load_policy(base_dir)).save(tmp_path / "mode")
    argv = ["finetune", "residual", "--base", str(tmp_path / "mode"), "--out", str(tmp_path / "r"), "--no-progress"]
    assert cli.main([*argv, "--base-noise", "zero"]) == 2
    err = capsys.readouterr().err.strip()
    assert "picks its own initial noise" in err and "drop --base-noise" in err and len(err.splitlines()) == 1


def test_a_reward_function_that_raises_loses_nothing(tmp_path, base_dir, capsys, monkeypatch):
    (tmp_path / "flaky_reward.py").write_text(
        "calls = 0\n"
        "def reward(obs, action, reward, info):\n"
        "    global calls\n"
        "    calls += 1\n"
        "    if calls > 700:\n"
        "        raise ValueError('sensor offline')\n"
        "    return reward\n"
    )
    monkeypatch.chdir(tmp_path)
    argv = ["finetune", "residual", "--base", str(base_dir), "--out", str(tmp_path / "r"), "--no-progress"]
    argv += ["--steps", "2000", "--warmup-steps", "200", "--critic-warmup-steps", "0", "--checkpoint-every", "300"]
    argv += ["--reward", "flaky_reward:reward", "--final", "last"]  # the guard's evaluations would call it too
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "reward function flaky_reward:reward raised ValueError: sensor offline" in err and len(err.splitlines()) == 1
    state = json.loads((tmp_path / "r" / "checkpoint" / "state.json").read_text())
    assert 0 < state["num_timesteps"] <= 700  # the last checkpoint before the failure is intact


def test_a_truncated_episode_s_last_observation_carries_the_next_base_action(base_dir):
    """SB3 bootstraps from a truncated episode's last observation, so its features must hold the
    base action that would run next there: the running chunk's next row, or (chunk finished) the
    first row of a chunk drawn from the env's second noise stream. Terminations get no base call."""
    import copy

    base = load_policy(base_dir)
    lo, hi = torch.full((2,), -1.0), torch.full((2,), 1.0)
    inner = DummyVecEnv([lambda: ReplayableEpisodes(ChunkedEnv(make(TASK), 1, 1, 1))] * 3)
    inner.seed(5)
    feats = Features.for_base(base, lo, hi)
    venv = ResidualVecEnv(inner, base, "step", 0.3, feats, seed=1)
    venv.reset()
    k, checked = base.action_horizon, {"mid-chunk": 0, "new chunk": 0}
    for _ in range(80):
        chunks, pos, term_rngs = venv._chunks.copy(), venv._pos.copy(), copy.deepcopy(venv._term_rngs)
        _, _, dones, infos = venv.step(np.zeros((3, 2), np.float32))
        for i in np.flatnonzero(dones):
            if not infos[i].get("TimeLimit.truncated"):
                continue
            term = infos[i]["terminal_observation"]
            if pos[i] + 1 < k:
                expected, kind = chunks[i, pos[i] + 1], "mid-chunk"
            else:
                noise = torch.as_tensor(term_rngs[i].standard_normal(base.noise_shape, dtype=np.float32))[None]
                obs = term[:2] * feats.obs_std.numpy() + feats.obs_mean.numpy()  # undo the normalisation
                expected = base.predict_chunk(torch.as_tensor(obs)[None], noise)[0, 0].numpy()
                kind = "new chunk"
            got = term[2:] * feats.half_range.numpy() + feats.center.numpy()
            assert np.allclose(got, expected, atol=1e-4), kind
            checked[kind] += 1
    assert checked["mid-chunk"] > 0 and checked["new chunk"] > 0, checked


def test_diverged_fine_tuning_stops_and_keeps_the_last_good_checkpoint(tmp_path, base_dir, capsys):
    """Non-finite weights are caught before a checkpoint is written over the last good one."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Poison(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == 450:
                with torch.no_grad():
                    next(self.model.policy.parameters()).fill_(float("nan"))
            return True

    cfg = quick(tmp_path, base_dir, algo="td3", steps=900, checkpoint_every=300)
    method = Residual()
    method.callbacks = lambda c, m, b, k, orig=method.callbacks: [*orig(c, m, b, k), Poison()]
    with pytest.raises(Exception, match="fine-tuning diverged at env step"):
        run_sb3(cfg, method)
    state = json.loads((tmp_path / "res" / "checkpoint" / "state.json").read_text())
    assert state["num_timesteps"] == 300


def test_final_best_keeps_the_best_evaluated_policy(tmp_path, base_dir):
    """``--final best``: policy/ is the best of the periodic and final evaluations, not the last."""
    out = train_residual(quick(tmp_path, base_dir, steps=900, eval_every=300, eval_episodes=10, final="best"))
    evals = [json.loads(x) for x in (tmp_path / "res" / "evals.jsonl").read_text().splitlines()]
    final = json.loads((tmp_path / "res" / "final_eval.json").read_text())
    record = json.loads((tmp_path / "res" / "best_policy.json").read_text())
    assert final["final"] == "best" and final["policy_env_steps"] == record["env_steps"]
    assert all(score(final) >= score(e) for e in evals)
    kept = (tmp_path / "res" / "best_policy" / "model.safetensors").read_bytes()
    assert (out / "model.safetensors").read_bytes() == kept


def test_final_guarded_works_for_residual_policies_too(tmp_path, base_dir):
    """--final guarded lives in the shared run loop: a residual run's policy/ is its deployed
    policy (the base or a residual policy that passed), as final_eval.json says."""
    out = train_residual(quick(tmp_path, base_dir, steps=900, eval_every=300, eval_episodes=10, final="guarded"))
    final = json.loads((tmp_path / "res" / "final_eval.json").read_text())
    record = json.loads((tmp_path / "res" / "guarded.json").read_text())
    assert final["final"] == "guarded" and final["deployed"] in ("base", "fine-tuned")
    kind = json.loads((out / "config.json").read_text())["type"]
    assert (kind == "residual") == (final["deployed"] == "fine-tuned") == bool(record["deployments"])


def test_the_best_policy_is_replaced_only_by_a_better_one(tmp_path, base_dir):
    best, policy = BestPolicy(tmp_path), load_policy(base_dir)
    assert best.offer(policy, {"success_rate": 0.5, "return_mean": -3.0}, 100)
    assert not best.offer(policy, {"success_rate": 0.4, "return_mean": 9.0}, 200)  # success first
    assert best.offer(policy, {"success_rate": 0.5, "return_mean": -2.0}, 300)  # then the return
    assert best.best()["env_steps"] == 300 and (tmp_path / "best_policy" / "config.json").exists()
    best.forget_after(250)  # resumed from a checkpoint before it
    assert best.best() is None and not (tmp_path / "best_policy").exists()


def test_per_algorithm_settings_have_their_own_flags_and_earlier_flat_files_still_read():
    from dpft.base_policies.infra.records import from_dict

    cfg = cli.parse("finetune residual", ["--algo", "ppo", "--ppo.rollout-steps", "16", "--td3.action-noise", "0.2"])
    assert (cfg.ppo.rollout_steps, cfg.td3.action_noise, cfg.sac.init_alpha) == (16, 0.2, 0.1)
    assert {"ppo.rollout_steps", "td3.action_noise"} <= cfg.explicit
    results = Path(__file__).resolve().parents[1] / "experiments" / "results"
    old = yaml.safe_load((results / "residual_bench" / "push" / "ppo" / "seed0" / "config.yaml").read_text())
    assert "rollout_steps" in old and "ppo" not in old, "a run recorded before the groups"
    cfg = from_dict(ResidualConfig, old)
    assert (cfg.ppo.rollout_steps, cfg.ppo.epochs, cfg.ppo.target_kl) == (
        old["rollout_steps"],
        old["epochs"],
        old["target_kl"],
    )
    both = from_dict(ResidualConfig, {"epochs": 3, "ppo": {"epochs": 5, "clip_range": 0.1}})
    assert (both.ppo.epochs, both.ppo.clip_range) == (5, 0.1), "the grouped value wins"


def test_a_group_given_as_a_plain_value_beside_a_flat_name_is_one_clear_error():
    from dpft.base_policies.infra.errors import ConfigError
    from dpft.base_policies.infra.records import from_dict

    with pytest.raises(ConfigError, match="'ppo' must be"):
        from_dict(ResidualConfig, {"epochs": 3, "ppo": 5})


def test_td3_bc_keeps_the_actor_near_the_replayed_corrections():
    """The claim behind --td3.bc-alpha: on a replay of r = 0 only (what the critic warm-up leaves),
    TD3's actor climbs the critic's extrapolation to a large correction, TD3+BC's stays near 0."""
    from stable_baselines3.common.logger import configure

    from dpft.finetune.residual.algos import ResidualTD3

    def actor_magnitude(bc_alpha: float) -> float:
        torch.manual_seed(0)
        env = gym.make("Pendulum-v1")
        model = ResidualTD3("MlpPolicy", env, learning_starts=0, seed=0, device="cpu", policy_kwargs={"net_arch": [32]})
        model.bc_alpha = bc_alpha
        model.set_logger(configure(None, []))
        obs, _ = env.reset(seed=0)
        for _ in range(300):
            nxt, r, term, trunc, _ = env.step(np.zeros(1, np.float32))
            model.replay_buffer.add(obs[None], nxt[None], np.zeros((1, 1)), np.array([r]), np.array([term]), [{}])
            obs = nxt if not (term or trunc) else env.reset()[0]
        model.train(300, 64)
        states = torch.as_tensor(model.replay_buffer.observations[:300, 0])
        return model.actor(states).abs().mean().item()

    plain, bc = actor_magnitude(0.0), actor_magnitude(2.5)
    assert plain > 0.3 and bc < plain / 4, (plain, bc)


def test_td3_bc_alpha_reaches_the_algorithm(base_dir, tmp_path):
    cfg = cli.parse("finetune residual", ["--base", str(base_dir), "--task", TASK, "--td3.bc-alpha", "2.5"])
    assert cfg.td3.bc_alpha == 2.5
    base = load_policy(base_dir)
    assert Residual().schedules(cfg, base)["bc_alpha"] == 2.5
    assert "bc_alpha" not in Residual().schedules(quick(tmp_path, base_dir, algo="sac"), base)
    out = train_residual(quick(tmp_path, base_dir, algo="td3", steps=600, td3=TD3Options(bc_alpha=2.5)))
    assert isinstance(load_policy(out), ResidualPolicy)
    assert yaml.safe_load((tmp_path / "res" / "config.yaml").read_text())["td3"]["bc_alpha"] == 2.5


def test_td3_bc_alpha_defaults_to_td3_bc_with_demonstrations_only(base_dir):
    """The default is the benchmarked recipe: TD3+BC's 2.5 with --demos (no collapse after the actor
    starts), plain TD3 without them (the term alone did worse); a value the user gives wins."""

    def bc_alpha(*flags: str) -> float:
        return cli.parse("finetune residual", ["--base", str(base_dir), "--task", TASK, *flags]).td3.bc_alpha

    assert bc_alpha() == 0.0
    assert bc_alpha("--demos", "d.hdf5") == 2.5
    assert bc_alpha("--demos", "d.hdf5", "--td3.bc-alpha", "0") == 0.0
    assert bc_alpha("--td3.bc-alpha", "1") == 1.0
