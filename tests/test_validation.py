"""Bad input is one clear error, never a silently wrong policy: robomimic observation groups,
masks and env_args; policy config.json keys and types; NaN/inf weights and losses; eval flags."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import tiny_policy
from safetensors.torch import load_file, save_file
from synthetic import bimodal_episodes

from dpft.base_policies import ArchConfig, CheckpointError, DatasetError, DpftError, load_policy
from dpft.base_policies.data import load_demonstrations, write_robomimic_hdf5
from dpft.base_policies.infra.state_io import load_state
from dpft.base_policies.policy import DenoisingPolicy
from dpft.base_policies.train_bc import TrainBCConfig, train_bc
from dpft.base_policies.weights import load_weights
from dpft.finetune.commands import cli

ARCH = ArchConfig(obs_horizon=1, pred_horizon=4, action_horizon=4, hidden_dim=16, num_blocks=1)
# robomimic's own env_args: a robosuite env name, no dpft task id, no action bounds
ROBOMIMIC_ENV_ARGS = {"env_name": "Lift", "type": 1, "env_kwargs": {"robots": ["Panda"], "control_freq": 20}}
ENV_ORDER = ["robot0_eef_pos", "object"]  # what the env emits; sorted order would put "object" first


def robomimic_file(path: Path, env_args: dict | None = None, keys=("robot0_eef_pos", "object"), n: int = 6) -> Path:
    """robomimic's layout: obs groups, a mask group of byte-string demo names, env_args JSON.
    In demo_i, robot0_eef_pos is 3 values of i and object 2 values of -i."""
    sizes = {"robot0_eef_pos": 3, "object": 2}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(ROBOMIMIC_ENV_ARGS if env_args is None else env_args)
        for i in range(n):
            g = data.create_group(f"demo_{i}")
            for k in keys:
                g[f"obs/{k}"] = np.full((6, sizes[k]), i if k == "robot0_eef_pos" else -i, np.float32)
            g["actions"] = np.random.default_rng(i).uniform(-1, 1, (6, 7)).astype(np.float32)
        f["mask/train"] = np.array([f"demo_{i}".encode() for i in range(n) if i % 3], dtype="S")
        f["mask/valid"] = np.array([f"demo_{i}".encode() for i in range(n) if not i % 3], dtype="S")
    return path


def assert_one_line_error(capsys, message: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    return err


def quick_bc(dataset: Path, out: Path, **kw) -> TrainBCConfig:
    common = dict(steps=4, batch_size=16, warmup_steps=1, checkpoint_every=10**9, progress=False, arch=ARCH)
    return TrainBCConfig(dataset=dataset, out=out, **{**common, **kw})


# ----- 1. robomimic observation groups, masks and env_args ------------------------------------


def test_obs_group_of_several_keys_needs_a_recorded_order_or_obs_keys(tmp_path):
    path = robomimic_file(tmp_path / "lift.hdf5")
    with pytest.raises(DatasetError, match=r"\['object', 'robot0_eef_pos'\].*pass --obs-keys .* order the env"):
        load_demonstrations(path)
    demos = load_demonstrations(path, obs_keys=ENV_ORDER)
    np.testing.assert_array_equal(demos.episodes[2].obs[0], [2, 2, 2, -2, -2])
    assert demos.obs_keys == tuple(ENV_ORDER)


def test_order_recorded_in_env_args_is_used(tmp_path):
    path = robomimic_file(tmp_path / "lift.hdf5", {**ROBOMIMIC_ENV_ARGS, "obs_keys": ENV_ORDER})
    demos = load_demonstrations(path)
    np.testing.assert_array_equal(demos.episodes[2].obs[0], [2, 2, 2, -2, -2])  # not sorted
    assert demos.obs_keys == tuple(ENV_ORDER)
    flipped = load_demonstrations(path, obs_keys=ENV_ORDER[::-1])  # --obs-keys wins over the file
    np.testing.assert_array_equal(flipped.episodes[2].obs[0], [-2, -2, 2, 2, 2])


def test_single_key_group_and_flat_obs_need_no_order(tmp_path):
    demos = load_demonstrations(robomimic_file(tmp_path / "one.hdf5", keys=("object",)))
    assert demos.obs_dim == 2 and demos.obs_keys == ("object",)
    write_robomimic_hdf5(tmp_path / "flat.hdf5", bimodal_episodes(3), {"task": "toy_envs:Obstacle-v0"})
    assert load_demonstrations(tmp_path / "flat.hdf5").obs_keys is None


def test_bad_recorded_obs_keys_are_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="obs_keys.*must be a non-empty list"):
        load_demonstrations(robomimic_file(tmp_path / "a.hdf5", {"obs_keys": "object"}))
    with pytest.raises(DatasetError, match=r"observation key\(s\) \['gripper'\] not found"):
        load_demonstrations(robomimic_file(tmp_path / "b.hdf5", {"obs_keys": ["object", "gripper"]}))


def test_filter_key_keeps_the_masked_demos(tmp_path):
    path = robomimic_file(tmp_path / "lift.hdf5")
    train = load_demonstrations(path, ENV_ORDER, filter_key="train")
    valid = load_demonstrations(path, ENV_ORDER, filter_key="valid")
    assert [e.name for e in train.episodes] == ["demo_1", "demo_2", "demo_4", "demo_5"]
    assert [e.name for e in valid.episodes] == ["demo_0", "demo_3"]
    assert len(load_demonstrations(path, ENV_ORDER).episodes) == 6


def test_bad_filter_key(tmp_path):
    path = robomimic_file(tmp_path / "lift.hdf5")
    with pytest.raises(DatasetError, match=r"unknown filter key 'test'.*mask/\{train, valid\}"):
        load_demonstrations(path, ENV_ORDER, filter_key="test")
    with h5py.File(path, "a") as f:
        f["mask/broken"] = np.array([b"demo_1", b"demo_99"])
    with pytest.raises(DatasetError, match=r"mask/broken lists demo\(s\) \['demo_99'\] that are not in data/"):
        load_demonstrations(path, ENV_ORDER, filter_key="broken")
    write_robomimic_hdf5(tmp_path / "plain.hdf5", bimodal_episodes(3), {})
    with pytest.raises(DatasetError, match="no mask group"):
        load_demonstrations(tmp_path / "plain.hdf5", filter_key="train")
    np.savez(tmp_path / "d.npz", obs=np.zeros((3, 2)), actions=np.zeros((3, 2)))
    with pytest.raises(DatasetError, match="--filter-key applies only to robomimic"):
        load_demonstrations(tmp_path / "d.npz", filter_key="train")


def test_trained_policy_records_obs_keys_and_no_guessed_task(tmp_path):
    path = robomimic_file(tmp_path / "lift.hdf5")
    policy = load_policy(train_bc(quick_bc(path, tmp_path / "run", obs_keys=tuple(ENV_ORDER), filter_key="train")))
    assert policy.config.obs_keys == tuple(ENV_ORDER)
    assert json.loads((tmp_path / "run" / "policy" / "config.json").read_text())["obs_keys"] == ENV_ORDER
    assert policy.config.task is None  # env_name "Lift" is not a dpft task id: left to --task
    assert policy.config.action_low is None
    again = train_bc(quick_bc(path, tmp_path / "run2", obs_keys=tuple(ENV_ORDER), task="robomimic:Lift"))
    assert load_policy(again).config.task == "robomimic:Lift"


def test_task_and_bounds_come_from_env_args_in_either_layout(tmp_path):
    env_args = {**ROBOMIMIC_ENV_ARGS, "task": "robomimic:Lift", "action_low": [-1] * 7, "action_high": [1] * 7}
    path = robomimic_file(tmp_path / "lift.hdf5", {**env_args, "obs_keys": ENV_ORDER})
    policy = load_policy(train_bc(quick_bc(path, tmp_path / "run")))
    assert policy.config.task == "robomimic:Lift" and policy.config.action_high == (1.0,) * 7
    bad = robomimic_file(tmp_path / "bad.hdf5", {**env_args, "obs_keys": ENV_ORDER, "action_low": [-1] * 3})
    with pytest.raises(DatasetError, match=r"bad.hdf5: env_args\['action_low'\] has 3 values but actions have 7"):
        train_bc(quick_bc(bad, tmp_path / "run-bad"))


def test_cli_dataset_errors_are_one_line(tmp_path, capsys):
    path = robomimic_file(tmp_path / "lift.hdf5")
    assert cli.main(["train-bc", "--dataset", str(path), "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    assert_one_line_error(capsys, "pass --obs-keys")
    args = ["train-bc", "--dataset", str(path), "--out", str(tmp_path / "b"), "--obs-keys", *ENV_ORDER]
    assert cli.main([*args, "--filter-key", "nope", "--no-progress"]) == 2
    assert_one_line_error(capsys, "unknown filter key 'nope'")


# ----- 2. policy config.json: every key present and typed ---------------------------------------


def _saved(tmp_path: Path) -> Path:
    tiny_policy().save(tmp_path / "p")
    return tmp_path / "p"


def _edit(folder: Path, edit) -> None:
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda m: m["arch"].update(pred_horizon="8"),
            "key 'arch.pred_horizon' must be an integer, got '8' (a string)",
        ),
        (lambda m: m.pop("arch"), "required key 'arch' (ArchConfig) is missing"),
        (lambda m: m.pop("action_dim"), "required key 'action_dim' (an integer) is missing"),
        (lambda m: m["arch"].pop("num_inference_steps"), "required key 'arch.num_inference_steps'"),
        (lambda m: m.pop("task"), "required key 'task' (a string or null) is missing"),
        (lambda m: m.update(obs_dim=5.0), "key 'obs_dim' must be an integer, got 5.0"),
        (lambda m: m["arch"].update(clip_sample="yes"), "key 'arch.clip_sample' must be true or false"),
        (lambda m: m["arch"].update(integrator="rk4"), "must be one of 'euler', 'midpoint', got 'rk4'"),
        (lambda m: m["arch"].update(unet_dims=[16, "32"]), "key 'arch.unet_dims' must be a list of integers"),
        (lambda m: m.update(action_low=["-1"] * 3), "key 'action_low' must be a list of numbers or null"),
        (lambda m: m.update(arch=[2, 8, 4]), "arch must be a JSON object, got a list"),
        (lambda m: m.update(obs_keys="object"), "key 'obs_keys' must be a list of strings or null"),
    ],
    ids=[
        "str-horizon",
        "no-arch",
        "no-action-dim",
        "no-arch-key",
        "no-task",
        "float-dim",
        "str-bool",
        "bad-literal",
        "str-in-list",
        "str-bounds",
        "arch-not-object",
        "obs-keys-str",
    ],
)
def test_config_json_key_or_type_error_names_file_key_and_type(tmp_path, edit, message):
    folder = _saved(tmp_path)
    _edit(folder, edit)
    with pytest.raises(CheckpointError, match="config.json is invalid: ") as e:
        load_policy(folder)
    assert str(folder / "config.json") in str(e.value) and message in str(e.value)


def test_policy_folder_from_before_obs_keys_still_loads(tmp_path):
    folder = _saved(tmp_path)
    _edit(folder, lambda m: m.pop("obs_keys"))
    assert load_policy(folder).config.obs_keys is None
    assert load_policy("shipped:metaworld-push-v3").config.obs_keys is None


def test_cli_eval_of_bad_config_is_one_line(tmp_path, capsys):
    folder = _saved(tmp_path)
    _edit(folder, lambda m: m["arch"].update(pred_horizon="8"))
    assert cli.main(["eval", "--policy", str(folder), "--task", "toy_envs:Obstacle-v0", "--episodes", "1"]) == 2
    assert_one_line_error(capsys, "'arch.pred_horizon' must be an integer")


# ----- 3. non-finite weights and losses ---------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_with_non_finite_values_are_refused(tmp_path, value):
    folder = _saved(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    key = next(k for k in state if k.startswith("denoiser"))
    state[key].view(-1)[3] = value
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"model.safetensors contains non-finite values in {key} \(1 of"):
        load_policy(folder)


@pytest.fixture
def obstacle_demos(tmp_path):
    path = tmp_path / "demos.hdf5"
    write_robomimic_hdf5(path, bimodal_episodes(40), {"task": "toy_envs:Obstacle-v0"})
    return path


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(obstacle_demos, tmp_path, monkeypatch):
    original, calls = DenoisingPolicy.forward, {"n": 0}

    def nan_from_step_15(self, obs, actions):
        calls["n"] += 1
        loss, info = original(self, obs, actions)
        return (loss * float("nan"), info) if calls["n"] >= 15 else (loss, info)

    monkeypatch.setattr(DenoisingPolicy, "forward", nan_from_step_15)
    cfg = quick_bc(obstacle_demos, tmp_path / "run", steps=30, checkpoint_every=10, log_every=1000, lr=3e-3)
    with pytest.raises(DpftError, match=r"NaN or inf at step 15; .*still holds step 10.*lower --lr \(now 0.003; try"):
        train_bc(cfg)
    checkpoint = tmp_path / "run" / "checkpoint"
    assert load_state(checkpoint)["step"] == 10  # step 20 was not written over it
    policy = tiny_policy(obs_dim=2, action_dim=2, **vars(ARCH))
    for name in ("model.safetensors", "ema.safetensors"):
        load_weights(policy, checkpoint, name)  # finite, or this raises
    assert not (tmp_path / "run" / "policy").exists()


def test_cli_divergent_lr_is_one_line(obstacle_demos, tmp_path, capsys, monkeypatch):
    """A loss that turns non-finite (an --lr of 1e30 did that, before --lr had a declared range)."""
    from dpft.base_policies.diffusion import DiffusionPolicy

    calls, forward = [0], DiffusionPolicy.forward

    def blows_up(self, *args, **kwargs):
        calls[0] += 1
        loss, extra = forward(self, *args, **kwargs)
        return (loss * float("nan") if calls[0] > 15 else loss), extra

    monkeypatch.setattr(DiffusionPolicy, "forward", blows_up)
    args = ["train-bc", "--dataset", str(obstacle_demos), "--out", str(tmp_path / "run")]
    assert cli.main([*args, "--steps", "50", "--warmup-steps", "1", "--log-every", "10", "--no-progress"]) == 2
    assert_one_line_error(capsys, "training diverged: the loss was NaN or inf at step ")
    assert not (tmp_path / "run" / "policy").exists()


# ----- 4. eval flags and --json -----------------------------------------------------------------


@pytest.mark.parametrize("episodes", ["0", "-3"])
def test_eval_needs_at_least_one_episode(capsys, episodes):
    assert cli.main(["eval", "--episodes", episodes]) == 2
    assert_one_line_error(capsys, f"--episodes must be >= 1, got {episodes}")


def test_eval_json_is_strict_json(tmp_path, capsys):
    tiny_policy(obs_dim=2, action_dim=2).save(tmp_path / "p")
    args = ["eval", "--policy", str(tmp_path / "p"), "--task", "toy_envs:Obstacle-v0", "--envs", "1"]
    assert cli.main([*args, "--episodes", "1", "--json", "--no-progress"]) == 0
    out = capsys.readouterr().out

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    summary = json.loads(out, parse_constant=refuse)
    assert summary["episodes"] == 1 and summary["return_ci95"] is None  # one episode: no interval
    assert isinstance(summary["return_mean"], float)
