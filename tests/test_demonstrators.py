"""Simulated demonstrators of mixed skill: the data has the intended mixed quality, every
demonstrator's behaviour is what its setting says, and the data is a function of the seed."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import h5py
import numpy as np
import pytest

from dpft.base_policies.data import load_demonstrations
from dpft.base_policies.infra.errors import ConfigError
from dpft.envs.config import EnvConfig
from dpft.envs.experts import get_expert
from dpft.envs.experts.demonstrators import MIXES, Demonstrator, MixedDemonstrators, load_demonstrators
from dpft.finetune.common.rollout import EnvSlots, run_episodes

LOW, HIGH = -np.ones(4), np.ones(4)


def dpft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpft.finetune", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def mh_push(tmp_path_factory):
    """18 push episodes from the mh mix (6 per demonstrator), as `dpft collect` writes them."""
    out = tmp_path_factory.mktemp("mh") / "push.hdf5"
    args = ["collect", "--task", "metaworld:push-v3", "--episodes", "18", "--envs", "3", "--demonstrators", "mh"]
    res = dpft(*args, "--seed", "100", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    return out, res.stdout


def test_mh_data_is_of_mixed_quality(mh_push):
    """Each quality group keeps its own band of success: the better operator nearly always
    succeeds, the worse one mostly fails, and the file lists who demonstrated what."""
    path, stdout = mh_push
    with h5py.File(path) as f:
        masks = {k: sorted(n.decode() for n in f["mask"][k][()]) for k in f["mask"]}
        args = json.loads(f["data"].attrs["env_args"])
        demos = list(f["data"])
    assert sorted(masks) == ["better", "okay", "worse"] and all(len(v) == 6 for v in masks.values())
    assert sorted(sum(masks.values(), [])) == sorted(demos)
    assert [d["name"] for d in args["demonstrators"]] == ["better", "okay", "worse"]
    rate = {
        name: float(line.split("success ")[1])
        for line in stdout.splitlines()
        if (name := line.strip().split(":")[0]) in masks
    }
    assert rate["better"] >= 0.8, rate
    assert rate["worse"] <= 0.5 and rate["okay"] <= 0.8, rate
    assert rate["better"] > rate["okay"] >= rate["worse"] - 0.2, rate
    worse = load_demonstrations(path, filter_key="worse")  # train-bc --filter-key worse
    assert len(worse.episodes) == 6


@pytest.mark.slow
def test_collection_is_a_function_of_the_seed(mh_push, tmp_path):
    path, _ = mh_push
    args = ["collect", "--task", "metaworld:push-v3", "--episodes", "18", "--envs", "3", "--demonstrators", "mh"]
    assert dpft(*args, "--seed", "100", "--out", str(tmp_path / "again.hdf5"), "--no-progress").returncode == 0
    with h5py.File(path) as a, h5py.File(tmp_path / "again.hdf5") as b:
        for demo in a["data"]:
            np.testing.assert_array_equal(a["data"][demo]["actions"][()], b["data"][demo]["actions"][()])


def test_a_process_that_runs_some_slots_plays_their_episodes():
    """Slots 1 and 3 of 4 run alone give the episodes they give in the whole run."""
    task, mix = "metaworld:reach-v3", MIXES["mh"]
    expert, cfg = get_expert(task), EnvConfig(task=task, envs=4, max_episode_steps=30)

    def run(indices):
        slots = EnvSlots(indices, 4)
        venv = replace(cfg, envs=len(indices)).make_vector(1, 1, 1)
        fn = MixedDemonstrators(expert, mix, 7, indices, 4, LOW, HIGH, task)
        return {r.env_index: r for r in run_episodes(fn, venv, 8, seed=7, slots=slots)}

    whole, part = run((0, 1, 2, 3)), run((1, 3))
    for slot in (1, 3):
        assert whole[slot].episode_return == part[slot].episode_return
        np.testing.assert_array_equal(whole[slot].decisions["demonstrator"], part[slot].decisions["demonstrator"])


def obs_row(hand=(0.0, 0.6, 0.2), obj=(0.1, 0.7, 0.02)) -> np.ndarray:
    o = np.zeros((1, 1, 39))
    o[0, 0, :3], o[0, 0, 4:7], o[0, 0, 22:25] = hand, obj, obj
    return o


def test_aim_error_shifts_what_the_expert_sees_for_the_whole_episode():
    seen = []

    def expert(obs):
        seen.append(obs[:, 4:7].copy())
        return np.zeros((len(obs), 4))

    fn = MixedDemonstrators(expert, (Demonstrator("a", aim_error=0.02),), 0, (0,), 1, LOW, HIGH, "metaworld:push-v3")
    fn(obs_row()), fn(obs_row())
    offset = seen[0][0] - np.array([0.1, 0.7, 0.02])
    assert 0.001 < np.linalg.norm(offset) < 0.15
    np.testing.assert_allclose(seen[1][0] - np.array([0.1, 0.7, 0.02]), offset)
    fn.reset(np.array([True]))  # the next episode misjudges by another amount
    fn(obs_row())
    assert not np.allclose(seen[2][0] - np.array([0.1, 0.7, 0.02]), offset)


def test_detour_visits_a_waypoint_above_the_start_before_the_task():
    fn = MixedDemonstrators(
        lambda o: np.full((len(o), 4), 0.5),
        (Demonstrator("d", detour=0.1),),
        0,
        (0,),
        1,
        LOW,
        HIGH,
        "metaworld:push-v3",
    )
    first = fn(obs_row())[0][0, 0]
    waypoint = fn.episodes[0].waypoint
    assert np.linalg.norm(waypoint - [0.0, 0.6, 0.2]) == pytest.approx(0.1) and waypoint[2] >= 0.2
    np.testing.assert_allclose(first[:3], np.clip((waypoint - [0.0, 0.6, 0.2]) * 10, -1, 1))
    at_waypoint = fn(obs_row(hand=tuple(waypoint)))[0][0, 0]
    np.testing.assert_allclose(at_waypoint, 0.5)  # reached: the expert's own action from now on


def test_speed_and_hesitation():
    slow = MixedDemonstrators(
        lambda o: np.full((len(o), 4), 0.8), (Demonstrator("s", speed=0.5),), 0, (0,), 1, LOW, HIGH, "metaworld:push-v3"
    )
    np.testing.assert_allclose(slow(obs_row())[0][0, 0], [0.4, 0.4, 0.4, 0.8])
    values = iter(np.linspace(-0.9, 0.9, 200))
    sticky = MixedDemonstrators(
        lambda o: np.full((len(o), 4), next(values)),
        (Demonstrator("h", hesitate=0.5),),
        0,
        (0,),
        1,
        LOW,
        HIGH,
        "gym:Hopper-v5",
    )
    actions = np.array([sticky(np.zeros((1, 1, 11)))[0][0, 0, 0] for _ in range(200)])
    repeats = np.mean(actions[1:] == actions[:-1])
    assert 0.35 < repeats < 0.65


def test_bad_demonstrator_specs(tmp_path):
    with pytest.raises(ConfigError, match="name a mix"):
        load_demonstrators("experts")
    bad = tmp_path / "d.json"
    bad.write_text(json.dumps([{"name": "x", "wobble": 1}]))
    with pytest.raises(ConfigError, match="unknown key"):
        load_demonstrators(str(bad))
    bad.write_text(json.dumps([{"name": "x", "speed": 2}]))
    with pytest.raises(ConfigError, match="speed must be in"):
        load_demonstrators(str(bad))
    with pytest.raises(ConfigError, match="Meta-World's observation layout"):
        MixedDemonstrators(None, MIXES["mh"], 0, (0,), 1, LOW, HIGH, "gym:Hopper-v5")
    res = dpft(
        "collect",
        "--task",
        "metaworld:push-v3",
        "--demonstrators",
        "mh",
        "--action-noise",
        "0.2",
        "--out",
        str(tmp_path / "x.hdf5"),
    )
    assert res.returncode != 0 and "does not apply with --demonstrators" in res.stderr.strip().splitlines()[-1]


def test_success_only_keeps_equal_successes_per_demonstrator(tmp_path):
    """As robomimic's MH sets (only successful demos, the same number per operator): the less
    skilled demonstrators are re-run until they have their share."""
    out = tmp_path / "reach.hdf5"
    args = ["collect", "--task", "metaworld:reach-v3", "--episodes", "6", "--envs", "3", "--demonstrators", "mh"]
    res = dpft(*args, "--success-only", "--max-episode-steps", "60", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    with h5py.File(out) as f:
        assert {k: len(f["mask"][k][()]) for k in f["mask"]} == {"better": 2, "okay": 2, "worse": 2}
    for name in ("better", "okay", "worse"):
        assert f"  {name}: 2 kept, " in res.stdout
