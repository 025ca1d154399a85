import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_policy
from safetensors.torch import load_file

from dpft.base_policies import CheckpointError, load_policy

REFERENCE = Path(__file__).parent / "data" / "reference_policy"


def test_save_load_is_bitwise_equal(policy, tmp_path):
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert type(loaded) is type(policy)
    a, b = policy.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    obs, noise = torch.randn(5, policy.obs_dim), torch.randn(5, *policy.noise_shape)
    assert torch.equal(policy.predict_chunk(obs, noise), loaded.predict_chunk(obs, noise))


def test_checkpoint_folder_has_no_pickles(policy, tmp_path):
    policy.save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["type"] == policy.type_name
    assert meta["obs_dim"] == policy.obs_dim and meta["arch"]["pred_horizon"] == policy.pred_horizon


def test_reference_checkpoint_reproduces_expected_outputs():
    """Guards the format: if this fails, old checkpoints no longer load the same."""
    policy = load_policy(REFERENCE)
    ref = load_file(str(REFERENCE.parent / "reference_expected.safetensors"))
    torch.testing.assert_close(policy.predict_chunk(ref["obs"], ref["noise"]), ref["actions"], rtol=1e-5, atol=1e-5)
    assert policy.config.task == "toy:reference"


def test_run_folder_is_accepted(tmp_path):
    tiny_policy().save(tmp_path / "run" / "policy")
    assert load_policy(tmp_path / "run").obs_dim == 5


@pytest.fixture
def copy_ref(tmp_path):
    dst = tmp_path / "ref"
    shutil.copytree(REFERENCE, dst)
    return dst


def _edit_config(folder: Path, **changes):
    meta = json.loads((folder / "config.json").read_text())
    meta.update(changes)
    (folder / "config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: shutil.rmtree(d), "does not exist"),
        (lambda d: (d / "config.json").unlink(), "config.json is missing"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:500]), "truncated"),
        (lambda d: _edit_config(d, type="transformer"), "unknown policy type 'transformer'"),
        (lambda d: _edit_config(d, format_version=99), "format_version 99"),
        (lambda d: _edit_config(d, obs_dim=7), "has shape"),
        (lambda d: _edit_config(d, arch={"num_blocks": 2}), "missing"),
        (lambda d: _edit_config(d, colour="red"), "unknown PolicyConfig setting"),
    ],
    ids=[
        "no-folder",
        "no-config",
        "bad-json",
        "no-weights",
        "truncated",
        "unknown-type",
        "version",
        "shape",
        "arch-mismatch",
        "unknown-key",
    ],
)
def test_bad_checkpoints_give_one_clear_error(copy_ref, damage, message):
    damage(copy_ref)
    with pytest.raises(CheckpointError, match=message):
        load_policy(copy_ref)
