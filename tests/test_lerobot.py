"""LeRobot diffusion policies in dpft, against references LeRobot itself made.

``tests/data/lerobot/v0.3.3`` and ``v0.4.4`` hold folders saved by LeRobot 0.3.3 (normaliser
in the model's buffers) and 0.4.4 (normaliser in processor files), with LeRobot's own chunks for
fixed observation histories and noises (``tests/lerobot/make_references.py``). The live round
trip with LeRobot installed is ``tests/test_lerobot_live.py`` (``make lerobot-check``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lerobot_refs import REFS, assert_matches, check_against, folder_of, read, references
from safetensors.torch import load_file, save_file

from dpft.base_policies import load_policy
from dpft.base_policies.lerobot.folder import read_folder
from dpft.finetune.commands import cli

TOY = "toy_envs:Reach-v0"
TOY44, TOY33 = REFS / "v0.4.4" / "toy_ddim", REFS / "v0.3.3" / "toy_ddim"


@pytest.mark.parametrize("expected", references(), ids=lambda p: f"{p.parent.name}-{p.name.split('.')[0]}")
def test_chunks_and_loss_equal_lerobots(expected):
    """Same observation history and initial noise: dpft's chunk is LeRobot's (DDIM exactly; a DDPM
    policy's chain with LeRobot's per-step noise too), and the training loss is LeRobot's."""
    assert_matches(check_against(expected))


def test_both_layouts_and_the_scheduler_variants_are_covered():
    layouts = {read_folder(folder_of(p)).layout for p in references()}
    assert layouts == {"buffers", "processors"}
    configs = [read_folder(folder_of(p)).config for p in references()]
    assert {c["noise_scheduler_type"] for c in configs} == {"DDPM", "DDIM"}
    assert {c["prediction_type"] for c in configs} == {"epsilon", "sample"}
    assert {c["beta_schedule"] for c in configs} == {"squaredcos_cap_v2", "linear", "scaled_linear", "sigmoid"}
    assert {c["clip_sample"] for c in configs} == {True, False}
    assert {c["n_obs_steps"] for c in configs} >= {1, 2, 3}
    modes = {m for c in configs for m in c["normalization_mapping"].values()}
    assert modes >= {"MIN_MAX", "MEAN_STD", "IDENTITY", "QUANTILES", "QUANTILE10"}
    strided = [c for c in configs if c["num_inference_steps"] and c["num_train_timesteps"] % c["num_inference_steps"]]
    assert strided  # inference steps that do not divide the training steps


@pytest.mark.parametrize("expected", references(), ids=lambda p: f"{p.parent.name}-{p.name.split('.')[0]}")
def test_the_references_can_tell_a_wrong_reading(expected):
    """The reference chunks depend on every input dpft maps (the environment state, the oldest
    observation of the history) and the network on the diffusion step, so a reader that got one
    of them wrong could not match them."""
    e, _ = read(expected)
    policy = load_policy(f"lerobot:{folder_of(expected)}")
    base = policy.predict_chunk(e["obs"], e["noise"])
    env = e["obs"].clone()
    env[..., policy.state_dim :] += 1.0
    assert (policy.predict_chunk(env, e["noise"]) - base).abs().max() > 1e-3
    if policy.obs_horizon > 1:
        old = e["obs"].clone()
        old[:, 0, 1:] += 1.0  # feature 0 is a constant one (its range is zero)
        assert (policy.predict_chunk(old, e["noise"]) - base).abs().max() > 1e-3
    cond, x = policy.condition(e["obs"]), e["noise"]
    first, last = torch.zeros(3, dtype=torch.long), torch.full((3,), policy.config.arch.num_train_steps - 1)
    with torch.no_grad():
        assert (policy.denoiser(x, first, cond) - policy.denoiser(x, last, cond)).abs().max() > 1e-3


def test_horizons_of_a_lerobot_policy():
    policy = load_policy(f"lerobot:{REFS / 'v0.4.4' / 'ddpm_eps_scaled'}")
    assert (policy.obs_horizon, policy.noise_shape, policy.pred_horizon, policy.action_horizon) == (3, (16, 2), 14, 6)


def test_a_compiled_unet_and_extra_state_keys_load(tmp_path):
    """``compile_model: true`` saves the U-Net under ``_orig_mod.``; the export keeps that name. Extra
    ``observation.*`` state keys (LeRobot lists every dataset key) are not read by its model, nor by dpft."""
    folder = _edit_config(TOY44, tmp_path / "p", lambda c: c["input_features"].update(
        {"observation.velocity": {"type": "STATE", "shape": [5]}}))  # fmt: skip
    state = load_file(str(folder / "model.safetensors"))
    renamed = {k.replace("diffusion.unet.", "diffusion.unet._orig_mod."): v for k, v in state.items()}
    save_file(renamed, str(folder / "model.safetensors"))
    policy, original = load_policy(f"lerobot:{folder}"), load_policy(f"lerobot:{TOY44}")
    e, _ = read(TOY44.with_name("toy_ddim.expected.safetensors"))
    assert torch.equal(policy.predict_chunk(e["obs"], e["noise"]), original.predict_chunk(e["obs"], e["noise"]))
    policy.export(tmp_path / "out")
    assert load_file(str(tmp_path / "out" / "model.safetensors")).keys() == renamed.keys()


def test_saved_and_exported_folders_keep_lerobots_files(tmp_path):
    policy = load_policy(f"lerobot:{TOY44}")
    with torch.no_grad():
        next(policy.denoiser.parameters()).add_(0.1)  # as fine-tuning would
    policy.save(tmp_path / "dpft")
    again = load_policy(tmp_path / "dpft")
    e, _ = read(TOY44.with_name("toy_ddim.expected.safetensors"))
    assert torch.equal(again.predict_chunk(e["obs"], e["noise"]), policy.predict_chunk(e["obs"], e["noise"]))
    assert cli.main(["export", "lerobot", "--policy", str(tmp_path / "dpft"), "--out", str(tmp_path / "out")]) == 0
    for f in TOY44.iterdir():  # config and processors byte for byte; the model with the new weights
        if f.name != "model.safetensors":
            assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes()
    written, original = (
        load_file(str(tmp_path / "out" / "model.safetensors")),
        load_file(str(TOY44 / "model.safetensors")),
    )
    assert written.keys() == original.keys()
    assert sum(not torch.equal(written[k], original[k]) for k in written) == 1
    exported = load_policy(f"lerobot:{tmp_path / 'out'}")
    assert torch.equal(exported.predict_chunk(e["obs"], e["noise"]), policy.predict_chunk(e["obs"], e["noise"]))


def test_a_03_folder_exports_in_its_own_layout(tmp_path):
    assert cli.main(["export", "lerobot", "--policy", f"lerobot:{TOY33}", "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    a, b = load_file(str(tmp_path / "out" / "model.safetensors")), load_file(str(TOY33 / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # normaliser buffers included


def test_dsrl_residual_and_eval_run_on_a_lerobot_base(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(Path(__file__).parent)  # toy_envs
    base = f"lerobot:{TOY44}"
    common = ["--task", TOY, "--steps", "200", "--warmup-steps", "100", "--eval-every", "200", "--eval-episodes", "2"]
    common += ["--checkpoint-every", "200", "--no-progress", "--final", "last"]  # the artifacts themselves
    assert cli.main(["finetune", "dsrl", "--base", base, *common, "--out", str(tmp_path / "dsrl")]) == 0
    res = ["--critic-warmup-steps", "0", "--out", str(tmp_path / "res")]
    assert cli.main(["finetune", "residual", "--base", base, *common, *res]) == 0
    assert (tmp_path / "dsrl" / "policy" / "base" / "lerobot" / "config.json").exists()  # the base in LeRobot form
    assert cli.main(["eval", "--policy", str(tmp_path / "res"), "--task", TOY, "--episodes", "2", "--json"]) == 0
    capsys.readouterr()
    assert cli.main(["export", "lerobot", "--policy", str(tmp_path / "dsrl"), "--out", str(tmp_path / "x")]) == 0
    said = capsys.readouterr().out
    assert "has no LeRobot form" in said and (tmp_path / "x" / "dpft" / "config.json").exists()
    assert (tmp_path / "x" / "policy_preprocessor.json").read_bytes() == (
        TOY44 / "policy_preprocessor.json"
    ).read_bytes()
    assert cli.main(["eval", "--policy", str(tmp_path / "x" / "dpft"), "--task", TOY, "--episodes", "2"]) == 0


def test_dpo_fine_tunes_a_lerobot_policy_and_exports_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(Path(__file__).parent)
    args = ["finetune", "dpo", "--base", f"lerobot:{TOY44}", "--task", TOY, "--rounds", "1", "--states", "8"]
    args += ["--streams", "2", "--steps-per-round", "10", "--eval-episodes", "2", "--no-progress", "--final", "last"]
    assert cli.main([*args, "--out", str(tmp_path / "dpo")]) == 0
    tuned = json.loads((tmp_path / "dpo" / "policy" / "config.json").read_text())
    assert tuned["type"] == "lerobot-diffusion" and tuned["provenance"]["method"] == "dpo"
    assert cli.main(["export", "lerobot", "--policy", str(tmp_path / "dpo"), "--out", str(tmp_path / "out")]) == 0
    assert "fine-tuned weights (dpo)" in capsys.readouterr().out
    a, b = load_file(str(tmp_path / "out" / "model.safetensors")), load_file(str(TOY44 / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


# ----- bad input: one line each, naming what is supported ---------------------------------------------
def _edit_config(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _no_processors(d: Path) -> None:
    for f in d.glob("policy_*"):
        f.unlink()


def _unset_buffers(d: Path) -> None:
    state = load_file(str(d / "model.safetensors"))
    state = {k: (torch.full_like(v, float("inf")) if k.startswith("normalize_inputs") else v) for k, v in state.items()}
    save_file(state, str(d / "model.safetensors"))


def _image_input(c: dict) -> None:
    c["input_features"]["observation.images.top"] = {"type": "VISUAL", "shape": [3, 96, 96]}


def _foreign_step(d: Path) -> None:
    pipeline = json.loads((d / "policy_preprocessor.json").read_text())
    pipeline["steps"].insert(0, {"registry_name": "my_custom_processor", "config": {}})
    (d / "policy_preprocessor.json").write_text(json.dumps(pipeline))


def _processor_step(edit, name: str = "normalizer_processor"):
    def damage(d: Path) -> None:
        pipeline = json.loads((d / "policy_preprocessor.json").read_text())
        edit(next(st for st in pipeline["steps"] if st["registry_name"] == name))
        (d / "policy_preprocessor.json").write_text(json.dumps(pipeline))

    return damage


BAD = {
    "another policy type": (TOY44, lambda c: c.update(type="act"), None, "is a LeRobot 'act' policy"),
    "image features": (TOY44, _image_input, None, "is image-conditioned"),
    "pre-0.2 format": (TOY44, lambda c: (c.pop("type"), c.update(input_shapes={})), None, "before 0.2"),
    "a key this format lacks": (TOY44, lambda c: c.pop("down_dims"), None, "lacks 'down_dims'"),
    "unknown scheduler": (TOY44, lambda c: c.update(noise_scheduler_type="DPM"), None, "['DDPM', 'DDIM']"),
    "no normaliser (0.4)": (TOY44, lambda c: None, _no_processors, "has no normaliser statistics"),
    "normaliser never set (0.3)": (TOY33, lambda c: None, _unset_buffers, "were never set"),
    "a processor step dpft cannot reproduce": (TOY44, lambda c: None, _foreign_step, "'my_custom_processor'"),
    "corrupt weights": (TOY44, lambda c: None, lambda d: (d / "model.safetensors").write_bytes(b"xx"), "corrupt"),
    "a list as a normalisation mode": (TOY33, lambda c: c["normalization_mapping"].update(STATE=["MIN_MAX"]), None,
                                       "normalisation ['MIN_MAX'] for STATE is not supported"),
    "a processor step without settings": (TOY44, lambda c: None, _processor_step(lambda st: st.update(config=None)),
                                          "needs a 'config' object and a 'state_file'"),
    "a processor eps that is not a number": (TOY44, lambda c: None, _processor_step(
        lambda st: st["config"].update(eps="x")), "eps must be a number"),
    "a cast of the observations to float16": (TOY44, lambda c: None, _processor_step(
        lambda st: st.setdefault("config", {}).update(float_dtype="float16"), "device_processor"), "casts to float16"),
    "no U-Net levels": (TOY44, lambda c: c.update(down_dims=[]), None, "down_dims must be a non-empty list"),
    "groups that do not divide the channels": (TOY44, lambda c: c.update(n_groups=5), None, "divisible by n_groups"),
    "a boolean step count": (TOY44, lambda c: c.update(num_inference_steps=True), None, "num_inference_steps must be"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_lerobot_folders_end_in_one_line(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent)
    src, edit, damage, says = BAD[case]
    folder = _edit_config(src, tmp_path / "p", edit)
    if damage:
        damage(folder)
    assert cli.main(["eval", "--policy", f"lerobot:{folder}", "--task", TOY, "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and says in err and len(err.splitlines()) == 1, err


def test_a_lerobot_policy_that_does_not_fit_the_task_says_how_it_reads_observations(capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent)
    folder = REFS / "v0.4.4" / "ddim_eps_cosine"  # 4-D state + 3-D environment state
    assert cli.main(["eval", "--policy", f"lerobot:{folder}", "--task", TOY, "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "observation.state (4) + observation.environment_state (3)" in err and len(err.splitlines()) == 1
    assert cli.main(["eval", "--policy", "lerobot:/no/such/folder", "--task", TOY]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_refuses_a_policy_without_a_lerobot_base(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["export", "lerobot", "--policy", "shipped:metaworld-push-v3", "--out", str(out)]) == 2
    assert "no LeRobot policy underneath" in capsys.readouterr().err and not out.exists()
    (tmp_path / "file").write_text("x")
    assert cli.main(["export", "lerobot", "--policy", f"lerobot:{TOY44}", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
