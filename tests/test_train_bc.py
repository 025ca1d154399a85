"""BC training: the claim users care about (multi-modality), resume, CLI and data parallelism."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import bimodal_episodes, obstacle_x
from torch import nn

from dpft.base_policies import ArchConfig, ConfigError, load_policy
from dpft.base_policies.data import write_robomimic_hdf5
from dpft.base_policies.infra.interrupt import RunInterrupted, request_stop
from dpft.base_policies.train_bc import BatchSampler, TrainBCConfig, train_bc
from dpft.finetune.commands import cli

ARCH = ArchConfig(obs_horizon=1, pred_horizon=8, action_horizon=8, hidden_dim=128, num_blocks=2)


@pytest.fixture(scope="module")
def bimodal_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "bimodal.hdf5"
    write_robomimic_hdf5(path, bimodal_episodes(300, left_fraction=0.7), {"task": "toy:bimodal"})
    return path


def _fit_mse_regressor(path) -> nn.Module:
    """The baseline users leave behind: a deterministic MLP trained with MSE on the same chunks."""
    from dpft.base_policies.data import load_demonstrations, make_windows

    w = make_windows(load_demonstrations(path).episodes, 1, 8)
    obs, act = w.obs[:, 0], w.actions.flatten(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 16))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(1500):
        idx = torch.randint(0, len(obs), (256,))
        loss = ((net(obs[idx]) - act[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_generative_policy_keeps_both_modes_where_mse_averages(bimodal_file, tmp_path, kind):
    cfg = TrainBCConfig(
        dataset=bimodal_file,
        out=tmp_path / "run",
        policy=kind,
        arch=ARCH,
        steps=1500,
        lr=1e-3,
        warmup_steps=50,
        checkpoint_every=10**9,
        progress=False,
    )
    policy = load_policy(train_bc(cfg))
    start = torch.zeros(400, 2)
    x = obstacle_x(policy.predict_chunk(start, generator=torch.Generator().manual_seed(0)).numpy())
    left, right = (x < -0.6).mean(), (x > 0.6).mean()
    assert left + right > 0.8, f"too many samples between the modes (left={left}, right={right})"
    assert 0.55 < left / (left + right) < 0.85, f"mode proportions off: left share {left / (left + right):.2f}"

    mse_x = obstacle_x(_fit_mse_regressor(bimodal_file)(start[:1]).detach().view(1, 8, 2).numpy())
    assert abs(mse_x[0]) < 0.6, "the MSE baseline should average the modes and head for the obstacle"


@pytest.mark.parametrize("how", ["stop requested", "second ctrl-c"])
def test_interrupted_run_resumes_to_the_same_weights(bimodal_file, tmp_path, monkeypatch, how):
    """A stop request (what SIGTERM or a first Ctrl-C makes) checkpoints between two steps; a second
    Ctrl-C checkpoints where it stands. Both resume to the weights of a run never stopped."""
    common = dict(
        dataset=bimodal_file,
        policy="diffusion",
        arch=ARCH,
        steps=30,
        batch_size=32,
        checkpoint_every=10,
        val_every=10,
        progress=False,
    )
    train_bc(TrainBCConfig(out=tmp_path / "straight", **common))

    original, calls = BatchSampler.next, {"n": 0}

    def flaky_next(self):
        calls["n"] += 1
        if calls["n"] == 18:
            if how == "stop requested":
                request_stop()  # what the SIGTERM handler does; this step still runs
            else:
                raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(BatchSampler, "next", flaky_next)
    with pytest.raises(RunInterrupted, match=f"interrupted at step {18 if how == 'stop requested' else 17}"):
        train_bc(TrainBCConfig(out=tmp_path / "cut", **common))
    assert not (tmp_path / "cut" / "policy").exists()
    monkeypatch.setattr(BatchSampler, "next", original)
    with pytest.raises(ConfigError, match="--resume"):
        train_bc(TrainBCConfig(out=tmp_path / "cut", **common))
    train_bc(TrainBCConfig(out=tmp_path / "cut", resume=True, progress=False))

    a, b = load_policy(tmp_path / "straight").state_dict(), load_policy(tmp_path / "cut").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    assert "train-bc" in capsys.readouterr().out


def test_cli_config_file_then_flags_override(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: 7\nlr: 0.01\narch:\n  pred_horizon: 16\n")
    cfg = cli.parse("train-bc", ["--config", str(tmp_path / "c.yaml"), "--steps", "3"])
    assert (cfg.steps, cfg.lr, cfg.arch.pred_horizon) == (3, 0.01, 16)


def test_a_config_file_extends_another_group_by_group(tmp_path):
    """``extends:`` starts from another file's settings (a path relative to the file); the file's
    own override them, a nested group key by key; flags still win over both."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text("steps: 7\nlr: 0.01\narch:\n  pred_horizon: 16\n  hidden_dim: 32\n")
    (tmp_path / "row.yaml").write_text("extends: shared/base.yaml\nlr: 0.02\narch:\n  hidden_dim: 64\n")
    cfg = cli.parse("train-bc", ["--config", str(tmp_path / "row.yaml"), "--steps", "3"])
    assert (cfg.steps, cfg.lr, cfg.arch.pred_horizon, cfg.arch.hidden_dim) == (3, 0.02, 16, 64)


@pytest.mark.parametrize(
    "text, message",
    [
        ("extends: nope.yaml\n", "nope.yaml (extended by"),
        ("extends: c.yaml\n", "leads back to a file that extends it"),
        ("extends: [a.yaml, b.yaml]\n", "'extends' must name one config file"),
    ],
)
def test_a_bad_extends_is_one_line(tmp_path, capsys, text, message):
    (tmp_path / "c.yaml").write_text(text)
    assert cli.main(["train-bc", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["train-bc", "--dataset", "missing.hdf5"], "dataset missing.hdf5 does not exist"),
        (["train-bc", "--policy", "gan"], "unknown --policy 'gan'"),
        (["train-bc", "--backbone", "unet", "--arch.pred-horizon", "6"], "try 6 -> 8"),
        (["train-bc", "--config", "nope.yaml"], "config file nope.yaml does not exist"),
        (["train-bc", "--out", "x", "--resume"], "cannot resume"),
    ],
)
def test_cli_bad_input_is_one_line(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("error: ")


@pytest.mark.slow
def test_data_parallel_under_accelerate_launch(bimodal_file, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "dpft.finetune",
        "train-bc",
        "--dataset",
        str(bimodal_file),
        "--out",
        str(tmp_path / "ddp"),
        "--steps",
        "20",
        "--batch-size",
        "64",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 processes" in proc.stdout
    policy = load_policy(tmp_path / "ddp")
    assert np.isfinite(policy.predict_chunk(torch.zeros(2, 2)).numpy()).all()


@pytest.mark.slow
def test_a_killed_train_bc_checkpoints_and_says_how_to_resume(bimodal_file, tmp_path):
    """A real SIGTERM to a `dpft train-bc` process: one line on stderr, no traceback, the checkpoint
    at the step it names."""
    out = tmp_path / "bc"
    cmd = [sys.executable, "-m", "dpft.finetune", "train-bc", "--dataset", str(bimodal_file), "--out", str(out)]
    cmd += ["--steps", "1000000", "--checkpoint-every", "50", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err
    step = int(re.search(r"interrupted at step (\d+); continue with: dpft train-bc --out .* --resume", err).group(1))
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == step
