import h5py
import numpy as np
import pytest

from dpft.base_policies import DatasetError
from dpft.base_policies.data import Episode, load_demonstrations, make_windows, split_episodes, write_robomimic_hdf5


def _episodes(n=3, T=5, obs_dim=4, act_dim=2):
    rng = np.random.default_rng(0)
    return [
        Episode(
            f"demo_{i}",
            rng.normal(size=(T + i, obs_dim)).astype(np.float32),
            rng.normal(size=(T + i, act_dim)).astype(np.float32),
        )
        for i in range(n)
    ]


def test_native_hdf5_round_trip(tmp_path):
    eps = _episodes()
    write_robomimic_hdf5(tmp_path / "d.hdf5", eps, {"task": "gym:Hopper-v5", "action_low": [-1, -1]})
    demos = load_demonstrations(tmp_path / "d.hdf5")
    assert demos.attrs["env_args"]["task"] == "gym:Hopper-v5"
    assert [len(e) for e in demos.episodes] == [5, 6, 7]
    for a, b in zip(eps, demos.episodes):
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.actions, b.actions)
    assert demos.episodes[0].dones[-1] and not demos.episodes[0].dones[:-1].any()


def _robomimic_group_file(path, obs_fn=None, n=12):
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i in range(n):
            g = data.create_group(f"demo_{i}")
            T = 4
            o = g.create_group("obs")
            o["robot0_eef_pos"] = np.full((T, 3), i, np.float32)
            o["object"] = np.full((T, 2), -i, np.float32)
            g["actions"] = np.zeros((T, 7), np.float32)
            if obs_fn:
                obs_fn(g)


def test_robomimic_group_obs_order_and_numeric_demo_order(tmp_path):
    _robomimic_group_file(tmp_path / "r.hdf5")
    with pytest.raises(DatasetError, match="pass --obs-keys"):  # no recorded order: never sorted silently
        load_demonstrations(tmp_path / "r.hdf5")
    demos = load_demonstrations(tmp_path / "r.hdf5", obs_keys=["object", "robot0_eef_pos"])
    assert [e.name for e in demos.episodes][:3] == ["demo_0", "demo_1", "demo_2"]
    assert demos.episodes[10].name == "demo_10"
    np.testing.assert_array_equal(demos.episodes[2].obs[0], [-2, -2, 2, 2, 2])
    chosen = load_demonstrations(tmp_path / "r.hdf5", obs_keys=["robot0_eef_pos", "object"])
    np.testing.assert_array_equal(chosen.episodes[2].obs[0], [2, 2, 2, -2, -2])
    with pytest.raises(DatasetError, match="observation key.*'gripper'"):
        load_demonstrations(tmp_path / "r.hdf5", obs_keys=["gripper"])


def test_npz_single_folder_and_concatenated(tmp_path):
    eps = _episodes()
    for e in eps:
        np.savez(tmp_path / f"{e.name}.npz", obs=e.obs, actions=e.actions)
    assert [len(e) for e in load_demonstrations(tmp_path).episodes] == [5, 6, 7]
    assert len(load_demonstrations(tmp_path / "demo_1.npz").episodes[0]) == 6
    cat = tmp_path / "cat" / "all.npz"
    cat.parent.mkdir()
    np.savez(
        cat,
        obs=np.concatenate([e.obs for e in eps]),
        actions=np.concatenate([e.actions for e in eps]),
        episode_ends=np.cumsum([len(e) for e in eps]),
    )
    got = load_demonstrations(cat).episodes
    assert [len(e) for e in got] == [5, 6, 7]
    np.testing.assert_array_equal(got[2].actions, eps[2].actions)


def test_minari_layout(tmp_path):
    root = tmp_path / "pointmaze-v0"
    (root / "data").mkdir(parents=True)
    with h5py.File(root / "data" / "main_data.hdf5", "w") as f:
        for i in range(2):
            g = f.create_group(f"episode_{i}")
            obs = g.create_group("observations")
            obs["observation"] = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
            obs["desired_goal"] = np.ones((6, 2), np.float32)
            g["actions"] = np.zeros((5, 2), np.float32)
            g["rewards"] = np.zeros(5)
            g["terminations"] = np.eye(1, 5, 4, dtype=bool)[0]
            g["truncations"] = np.zeros(5, bool)
    demos = load_demonstrations(root)
    assert len(demos.episodes) == 2 and demos.episodes[0].obs.shape == (5, 6)
    assert demos.episodes[0].dones[-1]


def test_windows_pad_at_episode_edges():
    ep = Episode("e", np.arange(4, dtype=np.float32)[:, None], np.arange(10, 14, dtype=np.float32)[:, None])
    w = make_windows([ep], obs_horizon=2, pred_horizon=3)
    assert w.obs.shape == (4, 2, 1) and w.actions.shape == (4, 3, 1)
    assert w.obs[0, :, 0].tolist() == [0, 0]  # start: repeat first obs
    assert w.obs[2, :, 0].tolist() == [1, 2]
    assert w.actions[0, :, 0].tolist() == [10, 11, 12]
    assert w.actions[3, :, 0].tolist() == [13, 13, 13]  # end: repeat last action


def test_split_holds_out_whole_episodes():
    eps = _episodes(10)
    train, val = split_episodes(eps, 0.2, seed=0)
    assert len(val) == 2 and len(train) == 8 and not {e.name for e in train} & {e.name for e in val}
    assert len(split_episodes(eps[:1], 0.5, 0)[0]) == 1  # never empties the training set


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda g: g.__delitem__("actions"), r"data/demo_0: missing key 'actions'"),
        (
            lambda g: (g.__delitem__("actions"), g.create_dataset("actions", data=np.zeros((3, 7)))),
            "demo_0 has 4 observations but 3 actions",
        ),
        (
            lambda g: g["obs"]["object"].__setitem__((2, 1), np.nan),
            r"demo_0/obs contains NaN or inf \(first at step 2\)",
        ),
    ],
    ids=["missing-key", "length-mismatch", "nan"],
)
def test_bad_hdf5_names_demo_and_key(tmp_path, fn, message):
    _robomimic_group_file(tmp_path / "bad.hdf5", obs_fn=lambda g: fn(g) if g.name.endswith("demo_0") else None, n=2)
    with pytest.raises(DatasetError, match=message):
        load_demonstrations(tmp_path / "bad.hdf5", obs_keys=["object", "robot0_eef_pos"])


def test_bad_files(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_demonstrations(tmp_path / "nope.hdf5")
    (tmp_path / "junk.hdf5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        load_demonstrations(tmp_path / "junk.hdf5")
    np.savez(tmp_path / "x.npz", observations=np.zeros((3, 2)))
    with pytest.raises(DatasetError, match="missing key 'obs'"):
        load_demonstrations(tmp_path / "x.npz")
    np.savez(tmp_path / "inf.npz", obs=np.zeros((3, 2)), actions=np.array([[0.0], [np.inf], [0.0]]))
    with pytest.raises(DatasetError, match="inf.*actions contains NaN or inf"):
        load_demonstrations(tmp_path / "inf.npz")
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(DatasetError, match="cannot tell the format"):
        load_demonstrations(tmp_path / "d.csv")
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("stuff")
    with pytest.raises(DatasetError, match="no 'data' group"):
        load_demonstrations(tmp_path / "empty.hdf5")
