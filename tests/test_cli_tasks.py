"""collect -> train-bc -> eval through the CLI on a real Meta-World task."""

import ctypes.util
import json
import os

import h5py
import numpy as np
import pytest

from dpft.base_policies import load_policy
from dpft.finetune.commands import cli

REACH = ["--task", "metaworld:reach-v3", "--max-episode-steps", "60", "--no-progress"]


@pytest.fixture(scope="module")
def reach_policy(tmp_path_factory):
    """10 expert demos of reach, a short BC run: the pipeline a new user runs first."""
    d = tmp_path_factory.mktemp("reach")
    assert cli.main(["collect", *REACH, "--episodes", "10", "--out", str(d / "demos.hdf5"), "--seed", "1"]) == 0
    assert (
        cli.main(
            [
                "train-bc",
                "--dataset",
                str(d / "demos.hdf5"),
                "--out",
                str(d / "bc"),
                "--steps",
                "800",
                "--lr",
                "1e-3",
                "--warmup-steps",
                "50",
                "--no-progress",
            ]
        )
        == 0
    )
    return d


def test_collect_writes_native_dataset(reach_policy):
    with h5py.File(reach_policy / "demos.hdf5") as f:
        demos = f["data"]
        assert len(demos) == 10 and json.loads(demos.attrs["env_args"])["task"] == "metaworld:reach-v3"
        assert demos["demo_0/obs"].shape == (60, 39) and demos["demo_0/actions"].shape == (60, 4)


def test_bc_policy_from_expert_demos_reaches(reach_policy, capsys):
    assert load_policy(reach_policy / "bc").config.task == "metaworld:reach-v3"
    assert (
        cli.main(
            [
                "eval",
                "--policy",
                str(reach_policy / "bc"),
                *REACH,
                "--episodes",
                "10",
                "--envs",
                "2",
                "--seed",
                "500",
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["episodes"] == 10 and summary["seed"] == 500
    assert {"success_rate", "return_mean", "success_ci95", "return_ci95"} <= summary.keys()
    assert summary["success_rate"] >= 0.5, summary


def test_eval_report_and_tensorboard(reach_policy, capsys, tmp_path):
    assert (
        cli.main(
            [
                "eval",
                "--policy",
                str(reach_policy / "bc"),
                *REACH,
                "--episodes",
                "2",
                "--envs",
                "2",
                "--logdir",
                str(tmp_path / "tb"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "success rate" in out and "95% CI" in out and "2 episodes, seed 0" in out
    assert any((tmp_path / "tb").iterdir())


# OSMesa renders anywhere; EGL where the machine provides it (run with MUJOCO_GL=egl).
RENDERS = ctypes.util.find_library("OSMesa") is not None or os.environ.get("MUJOCO_GL") == "egl"


@pytest.mark.skipif(not RENDERS, reason="needs libosmesa6 (installed by .ci/run) or MUJOCO_GL=egl")
def test_eval_video(reach_policy, tmp_path):
    import imageio.v2 as imageio

    out = tmp_path / "clip.gif"
    assert (
        cli.main(
            [
                "eval",
                "--policy",
                str(reach_policy / "bc"),
                "--task",
                "metaworld:reach-v3",
                "--max-episode-steps",
                "12",
                "--episodes",
                "1",
                "--envs",
                "1",
                "--video",
                str(out),
                "--video-episodes",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    horizon = load_policy(reach_policy / "bc").action_horizon
    assert len(imageio.mimread(out)) == 1 + -(-12 // horizon), "the reset frame, then one per executed chunk"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "gym:Hopper-v5"], "expects observations of size 39 and actions of size 4"),
        (["--task", "metaworld:reach-v3", "--reward", "nope_module:fn"], "cannot import module 'nope_module'"),
        (["--task", "metaworld:nope-v3"], "unknown Meta-World task 'nope-v3'"),
        (["--noise-mode", "sampled"], "is not a DSRL policy; drop the flag"),
    ],
)
def test_eval_bad_input_is_one_line(reach_policy, capsys, args, message):
    assert cli.main(["eval", "--policy", str(reach_policy / "bc"), "--episodes", "1", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_reward_function_that_raises_stops_cleanly(reach_policy, capsys, tmp_path, monkeypatch):
    (tmp_path / "bad_reward.py").write_text("def r(obs, action, reward, info):\n    raise KeyError('x')\n")
    monkeypatch.chdir(tmp_path)
    assert (
        cli.main(
            [
                "eval",
                "--policy",
                str(reach_policy / "bc"),
                *REACH,
                "--episodes",
                "1",
                "--envs",
                "1",
                "--reward",
                "bad_reward:r",
            ]
        )
        == 2
    )
    assert "reward function bad_reward:r raised KeyError" in capsys.readouterr().err


def test_collect_unknown_expert(capsys, tmp_path):
    assert (
        cli.main(
            ["collect", "--task", "robotics:AdroitHandDoor-v1", "--episodes", "1", "--out", str(tmp_path / "x.hdf5")]
        )
        == 2
    )
    assert "no scripted expert" in capsys.readouterr().err


def test_collect_success_only_keeps_only_successes(tmp_path):
    out = tmp_path / "s.hdf5"
    # within 45 steps the reach expert succeeds in about half the episodes (success steps 34-58)
    assert (
        cli.main(
            [
                "collect",
                "--task",
                "metaworld:reach-v3",
                "--max-episode-steps",
                "45",
                "--episodes",
                "3",
                "--success-only",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    with h5py.File(out) as f:
        assert len(f["data"]) == 3 and json.loads(f["data"].attrs["env_args"])["success_only"]
        for demo in f["data"].values():  # success needs the hand within 5 cm of the goal at the end
            obs = demo["obs"][()]
            assert np.linalg.norm(obs[-1, :3] - obs[-1, 36:39]) < 0.1
