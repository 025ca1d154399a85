"""The foundations every method builds on: packaging and layering, plug-ins through entry points,
the composed-policy artifact, and exact resume of an on-policy (PPO) run."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import StopAt, tiny_policy
from stable_baselines3 import PPO

from dpft.base_policies import CheckpointError, load_policy
from dpft.base_policies.composed import folder_hash
from dpft.base_policies.infra.interrupt import RunInterrupted, graceful_stop, request_stop
from dpft.base_policies.infra.run_folder import RunFolder
from dpft.base_policies.infra.step_loop import StepLoop
from dpft.base_policies.sb3_actor import SquashedMeanActor
from dpft.finetune.commands import cli
from dpft.finetune.common.run import make_vec_env, run_sb3
from dpft.finetune.common.run_checkpoint import load_sb3_checkpoint
from dpft.finetune.dsrl.steered import SteeredPolicy
from dpft.finetune.dsrl.train import DSRL, DSRLConfig

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"base_policies": 0, "envs": 1, "finetune": 2}


# ----- packaging and layering ----------------------------------------------------------------
def test_every_package_folder_is_installed_under_the_dpft_namespace():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        "dpft." + str(p.parent.relative_to(ROOT)).replace("/", ".")
        for L in LAYERS
        for p in (ROOT / L).rglob("__init__.py")
    }
    assert found == listed


def test_no_import_runs_up_the_layers():
    """base_policies < envs < finetune: a module never imports from a layer above its own."""
    offenders = []
    for layer, rank in LAYERS.items():
        for file in (ROOT / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "dpft" and len(parts) > 1 and LAYERS.get(parts[1], -1) > rank:
                        offenders.append(f"{file.relative_to(ROOT)} imports {name}")
    assert not offenders, offenders


def imports_of(file: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
    return out


def test_the_infrastructure_knows_nothing_of_policies_tasks_or_methods():
    """base_policies/infra is the bottom: it imports no other dpft module."""
    offenders = [
        f"{file.relative_to(ROOT)} imports {name}"
        for file in (ROOT / "base_policies" / "infra").rglob("*.py")
        for name in imports_of(file)
        if name.startswith("dpft.") and not name.startswith("dpft.base_policies.infra")
    ]
    assert not offenders, offenders


def test_methods_do_not_import_the_commands():
    """finetune/commands (CLI, launcher, collect, eval, export, steerability) sits on top of the
    methods and their shared parts; nothing below it imports from it."""
    offenders = [
        f"{file.relative_to(ROOT)} imports {name}"
        for file in (ROOT / "finetune").rglob("*.py")
        if "commands" not in file.relative_to(ROOT).parts and file.name != "__main__.py"
        for name in imports_of(file)
        if name.startswith("dpft.finetune.commands")
    ]
    assert not offenders, offenders


def test_no_two_modules_share_a_name_for_different_jobs():
    """A module name means one thing. Method folders share role names on purpose (config, env,
    policy, train: the same job per method); dsrl/networks.py keeps old pickled class names."""
    roles = {"__init__.py", "__main__.py", "train.py", "policy.py", "env.py", "config.py"}
    seen: dict[str, list[str]] = {}
    for layer in LAYERS:
        for file in (ROOT / layer).rglob("*.py"):
            if file.name not in roles and not (file.parent.name == "dsrl" and file.name == "networks.py"):
                seen.setdefault(file.name, []).append(str(file.relative_to(ROOT)))
    assert not {k: v for k, v in seen.items() if len(v) > 1}


def test_importing_envs_does_not_import_torch():
    code = "import sys, dpft.envs.config, dpft.envs.rewards, dpft.envs.episode_replay; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "False"


# ----- plug-ins from another package -----------------------------------------------------------
PLUGIN = '''
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from dpft.base_policies.policy import Policy, register_policy
from dpft.envs.tasks import register_family


@register_policy("constant")
class ConstantPolicy(Policy):
    obs_dim, action_dim, obs_horizon, pred_horizon, action_horizon = 2, 2, 1, 4, 2

    def predict_chunk(self, obs, noise=None, generator=None):
        return torch.full((obs.shape[0], 4, 2), 0.5)

    def save(self, path):
        raise NotImplementedError

    @classmethod
    def from_folder(cls, path, meta):
        return cls()


@register_family("plugfam")
def make_plug(name, max_episode_steps=None, render_mode=None):
    return gym.make("Pendulum-v1", max_episode_steps=max_episode_steps)


class Double(gym.RewardWrapper):
    def reward(self, reward):
        return 2 * reward


@dataclass
class HelloConfig:
    """Say hello (a command from another package)."""

    name: str = "world"
    """Who to greet."""


def hello(cfg: HelloConfig) -> None:
    print(f"hello {cfg.name}")
'''

ENTRY_POINTS = """
[dpft.policies]
constant = dpft_plugin_mod:ConstantPolicy
[dpft.tasks]
plugfam = dpft_plugin_mod
[dpft.rewards]
double = dpft_plugin_mod:Double
[dpft.commands]
hello = dpft_plugin_mod:hello
"""


def test_another_package_adds_a_policy_type_task_family_reward_and_command(tmp_path, monkeypatch, capsys):
    """A real distribution on sys.path (dist-info with entry_points.txt), as `pip install` leaves it."""
    (tmp_path / "dpft_plugin_mod.py").write_text(PLUGIN)
    info = tmp_path / "dpft_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dpft-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))

    folder = tmp_path / "pol"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"type": "constant", "format_version": 1}))
    assert load_policy(folder).predict_chunk(torch.zeros(3, 2)).shape == (3, 4, 2)

    from dpft.envs.config import EnvConfig

    env = EnvConfig(task="plugfam:anything", reward="double").make_env()
    env.reset(seed=0)
    _, reward, *_ = env.step(np.zeros(1, np.float32))
    inner = gym_reward_of_pendulum()
    assert reward == pytest.approx(2 * inner)

    assert cli.main(["--help"]) == 0 and "hello" in capsys.readouterr().out
    assert cli.main(["hello", "--name", "dpft"]) == 0 and "hello dpft" in capsys.readouterr().out


def gym_reward_of_pendulum() -> float:
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    env.reset(seed=0)
    return float(env.step(np.zeros(1, np.float32))[1])


# ----- the composed-policy artifact ---------------------------------------------------------
def steered_on(base, hidden=(16,)) -> SteeredPolicy:
    torch.manual_seed(0)
    actor = SquashedMeanActor(base.obs_horizon * base.obs_dim, list(hidden), base.pred_horizon * base.action_dim)
    return SteeredPolicy(base, actor, {"action_magnitude": 1.5, "hidden": list(hidden), "variant": "na"})


def test_a_steered_policy_names_a_shipped_base_and_checks_its_hash(tmp_path):
    base = load_policy("shipped:metaworld-push-v3")
    steered_on(base).save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    assert meta["base"]["shipped"] == "metaworld-push-v3" and not (tmp_path / "p" / "base").exists()
    assert sum(f.stat().st_size for f in (tmp_path / "p").iterdir()) < 50_000
    assert "dpft_version" in meta["provenance"]

    loaded = load_policy(tmp_path / "p")
    obs, noise = torch.randn(4, base.obs_dim), torch.randn(4, *base.noise_shape)
    assert torch.equal(loaded.predict_chunk(obs, noise), steered_on(base).predict_chunk(obs, noise))

    meta["base"]["sha256"] = "0" * 64  # made on a shipped base that has since changed
    (tmp_path / "p" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="installed shipped:metaworld-push-v3 has hash"):
        load_policy(tmp_path / "p")


def test_a_steered_policy_copies_a_base_that_is_not_shipped_and_old_artifacts_still_load(tmp_path):
    base = tiny_policy(obs_dim=2, action_dim=2)
    base.save(tmp_path / "base_src")
    base = load_policy(tmp_path / "base_src")
    steered_on(base).save(tmp_path / "p")
    assert (tmp_path / "p" / "base" / "model.safetensors").exists()
    assert folder_hash(tmp_path / "p" / "base") == folder_hash(tmp_path / "base_src")
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    for key in ("base", "provenance"):  # the layout written before these keys existed
        del meta[key]
    meta["future_key"] = {"anything": 1}  # and a key a later dpft might add
    (tmp_path / "p" / "config.json").write_text(json.dumps(meta))
    obs, noise = torch.randn(3, 2), torch.randn(3, *base.noise_shape)
    assert torch.equal(
        load_policy(tmp_path / "p").predict_chunk(obs, noise), steered_on(base).predict_chunk(obs, noise)
    )


# ----- on-policy exact resume ----------------------------------------------------------------
class PPOSteer(DSRL):
    """An on-policy method on the shared loop: PPO choosing the base's noise (no replay buffer)."""

    def algorithm(self, cfg):
        return PPO

    def new_model(self, cfg, base, venv):
        return PPO("MlpPolicy", venv, n_steps=8, batch_size=8, n_epochs=2, seed=cfg.seed, device=base.device)

    def load_kwargs(self, cfg, base):
        return {}

    def artifact(self, model, base, cfg):
        return base

    def callbacks(self, cfg, model, base, k):
        return [StopAt(self.stop_at, k)] if getattr(self, "stop_at", None) else []


def test_an_on_policy_run_stopped_mid_episode_resumes_to_the_same_weights(tmp_path):
    base = tiny_policy(obs_dim=2, action_dim=2, obs_horizon=1, pred_horizon=8, action_horizon=4)
    base.config.task = "toy_envs:Obstacle-v0"
    base.save(tmp_path / "base")
    kw = dict(base=str(tmp_path / "base"), envs=2, steps=256, eval_every=128, eval_episodes=2, progress=False)
    kw.update(warmup_steps=0, final="last")  # PPO has no warm-up; the guard is not what is tested here
    run_sb3(DSRLConfig(out=tmp_path / "straight", **kw), PPOSteer())
    stopping = PPOSteer()
    stopping.stop_at = 104  # 13 chunks per env: mid-episode (2 chunks per episode), mid-rollout (8 per rollout)
    with pytest.raises(RunInterrupted, match="interrupted at"):
        run_sb3(DSRLConfig(out=tmp_path / "stopped", **kw), stopping)
    assert not (RunFolder(tmp_path / "stopped").checkpoint_dir / "replay.pkl").exists()
    run_sb3(DSRLConfig(out=tmp_path / "stopped", resume=True, progress=False), PPOSteer())

    def final(name):
        cfg = RunFolder(tmp_path / name).read_config(DSRLConfig)
        b = load_policy(cfg.base)
        venv = make_vec_env(cfg, lambda: PPOSteer().make_env(cfg, b))
        return load_sb3_checkpoint(PPO, tmp_path / name / "checkpoint", venv)[0]

    a, b = final("straight"), final("stopped")
    assert a.num_timesteps == b.num_timesteps == 64
    sa, sb = a.policy.state_dict(), b.policy.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    oa, ob = a.policy.optimizer.state_dict()["state"], b.policy.optimizer.state_dict()["state"]
    assert all(torch.equal(oa[i]["exp_avg"], ob[i]["exp_avg"]) for i in oa)


def test_checkpoints_from_before_the_namespace_still_unpickle():
    """SB3 checkpoints of older DSRL runs name their classes ``finetune.dsrl.replay...``."""
    import pickle

    from dpft.finetune.common.run_checkpoint import pre_namespace_names
    from dpft.finetune.dsrl.replay import ChunkReplayBuffer

    old = pickle.dumps(ChunkReplayBuffer, protocol=0).replace(b"dpft.finetune.dsrl.replay", b"finetune.dsrl.replay")
    assert b"dpft." not in old
    with pre_namespace_names():
        assert pickle.loads(old) is ChunkReplayBuffer


# ----- the step loop shared by train-bc and DPO -----------------------------------------------


class CountingRun:
    """A 'training run' whose state is a counter and a random generator, so a resumed run can be
    compared with an uninterrupted one by value."""

    def __init__(self, interrupt_at: int | None = None, how: str = "") -> None:
        self.done, self.gen, self.draws = 0, torch.Generator().manual_seed(0), []
        self.saved: list[tuple] = []  # (steps, counter, draws, generator state) at each checkpoint
        self.own: list[tuple] = []  # the same, written by the emergency checkpoint
        self.logged: list[int] = []
        self.rewinds = 0
        self.interrupt_at, self.how = interrupt_at, how

    def step(self, n: int) -> dict:
        draw = torch.rand(1, generator=self.gen).item()
        if n == self.interrupt_at:
            if self.how == "stop requested":
                request_stop()  # what SIGTERM does: this step still completes
            elif self.how == "second ctrl-c":
                raise KeyboardInterrupt  # after the step began using the generator
        self.draws.append(draw)
        self.done = n + 1
        return {"loss": torch.tensor(float(n))}

    def after_step(self, n: int) -> None:
        if self.how == "second ctrl-c after a step" and n == self.interrupt_at:
            raise KeyboardInterrupt  # between two steps: nothing to undo

    def snapshot(self, n: int) -> tuple:
        return (n, self.done, list(self.draws), self.gen.get_state())

    def loop(self) -> StepLoop:
        state_before = {}

        def step(n):
            state_before["gen"] = self.gen.get_state()
            return self.step(n)

        def rewind():
            self.rewinds += 1
            self.gen.set_state(state_before["gen"])

        return StepLoop(
            step=step,
            checkpoint=lambda n: self.saved.append(self.snapshot(n)),
            emergency_checkpoint=lambda n: self.own.append(self.snapshot(n)),
            rewind=rewind,
            resume_hint="dpft toy --resume",
            checkpoint_every=4,
            log=lambda n, s: self.logged.append(n),
            log_every=3,
            after_step=self.after_step,
            progress=False,
        )


def test_the_step_loop_checkpoints_logs_and_stops_where_the_contract_says():
    run = CountingRun()
    with graceful_stop():
        assert run.loop().run(0, 8) == 8
    assert [s[0] for s in run.saved] == [4]  # every 4 steps, not at the last (the caller saves after it)
    assert run.logged == [3, 6] and not run.own and run.rewinds == 0


@pytest.mark.parametrize("how", ["stop requested", "second ctrl-c", "second ctrl-c after a step"])
def test_a_run_stopped_in_the_step_loop_resumes_to_the_same_state(how):
    """A stop request ends the loop after the step it came in, with the agreed checkpoint at the
    boundary; a second Ctrl-C writes the emergency checkpoint, after rewinding what a cut step
    began (and nothing when it came between steps), so the resumed run redoes it exactly."""
    straight = CountingRun()
    with graceful_stop():
        straight.loop().run(0, 10)
    cut = CountingRun(interrupt_at=5, how=how)
    where = 6 if how == "stop requested" else 5  # the stop request comes inside step 5, which completes
    with graceful_stop(), pytest.raises(RunInterrupted, match=f"interrupted at step {where}; .*dpft toy --resume"):
        cut.loop().run(0, 10)
    written = cut.saved if how == "stop requested" else cut.own
    assert len(written) == 1 if how != "stop requested" else cut.own == []
    assert cut.rewinds == (1 if how == "second ctrl-c" else 0)
    n, done, draws, gen_state = written[-1]
    assert n == done == where
    resumed = CountingRun()
    resumed.draws, resumed.done = draws, done
    resumed.gen.set_state(gen_state)
    with graceful_stop():
        resumed.loop().run(n, 10)
    assert resumed.draws == straight.draws
