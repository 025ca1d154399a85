"""``dpft set-sampling``: a base copy that executes another chunk length or takes another number
of denoising steps, with the same weights and no re-training."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_policy

from dpft.base_policies import load_policy
from dpft.finetune.commands import cli


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_a_copy_keeps_the_weights_and_changes_only_what_was_asked(kind, tmp_path):
    src = tmp_path / "base"
    tiny_policy(kind).save(src)
    short, fewer = tmp_path / "ah2", tmp_path / "k3"
    assert cli.main(["set-sampling", "--policy", str(src), "--out", str(short), "--action-horizon", "2"]) == 0
    assert cli.main(["set-sampling", "--policy", str(src), "--out", str(fewer), "--denoising-steps", "3"]) == 0

    base, a, k = load_policy(src), load_policy(short), load_policy(fewer)
    assert (base.action_horizon, a.action_horizon, a.pred_horizon) == (4, 2, base.pred_horizon)
    assert (k.config.arch.num_inference_steps, base.config.arch.num_inference_steps) == (3, 10)
    assert (short / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    meta = json.loads((fewer / "config.json").read_text())
    assert meta["provenance"]["sampling_changed"] == {"from": str(src), "before": {"num_inference_steps": 10}}

    obs, noise = torch.randn(3, base.obs_dim), torch.randn(3, *base.noise_shape)

    def chunk(p):
        return p.predict_chunk(obs, noise, torch.Generator().manual_seed(0))

    assert torch.equal(chunk(base), chunk(a))  # the same plan; only less of it runs
    assert not torch.allclose(chunk(base), chunk(k))  # another sampler: another noise-to-chunk map


def test_a_fine_tuned_artifact_is_refused_with_what_to_do(tmp_path, capsys):
    from dpft.finetune.dsrl.steered import SteeredPolicy

    base = tiny_policy()
    actor = SteeredPolicy.build_learned(base, {"action_magnitude": 1.5, "hidden": [8]})
    SteeredPolicy(base, actor, {"action_magnitude": 1.5, "hidden": [8]}).save(tmp_path / "steered")
    out = tmp_path / "o"
    argv = ["set-sampling", "--policy", str(tmp_path / "steered"), "--out", str(out), "--action-horizon", "2"]
    assert cli.main(argv) == 2
    assert "fine-tune again on a changed base" in capsys.readouterr().err
    assert not out.exists()
