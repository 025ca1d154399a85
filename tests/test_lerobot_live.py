"""The live LeRobot round trip: LeRobot saves -> dpft loads, dpft exports -> LeRobot loads.

Needs LeRobot environments beside dpft's (``make lerobot-check`` builds them with
``tests/lerobot/make_env.sh`` and runs this file; CI does). Without them, every test here skips.
``DPFT_LEROBOT_ENVS`` lists them as ``VERSION=VENV`` pairs separated by spaces.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from lerobot_refs import REFS, assert_matches, check_against, read, references
from safetensors.torch import load_file, save_file

from dpft.base_policies import load_policy
from dpft.finetune.commands import cli

HERE = Path(__file__).parent
TOY = "toy_envs:Reach-v0"
# resolved now: the tests below change the working directory (the toy tasks are found from tests/)
ENVS = {
    v: Path(p).resolve() for v, p in (pair.split("=", 1) for pair in os.environ.get("DPFT_LEROBOT_ENVS", "").split())
}
pytestmark = pytest.mark.skipif(not ENVS, reason="no LeRobot environment (make lerobot-check)")


def lerobot(version: str, script: str, *args) -> None:
    python = ENVS[version] / "bin" / "python"
    res = subprocess.run([str(python), str(HERE / "lerobot" / script), *map(str, args)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


def lerobot_chunks(version: str, folder: Path, obs: torch.Tensor, noise: torch.Tensor, tmp: Path) -> torch.Tensor:
    """The chunks LeRobot's ``from_pretrained`` policy (and processors) makes from ``folder``."""
    save_file({"obs": obs.contiguous(), "noise": noise.contiguous()}, str(tmp / "inputs.safetensors"))
    lerobot(version, "chunks_of.py", folder, tmp / "inputs.safetensors", tmp / "chunks.safetensors")
    return load_file(str(tmp / "chunks.safetensors"))["chunk"]


@pytest.fixture(scope="module", params=sorted(ENVS) or ["none"])
def fresh(request, tmp_path_factory) -> tuple[str, Path]:
    """References made now by this LeRobot version."""
    out = tmp_path_factory.mktemp(f"lerobot-{request.param}")
    lerobot(request.param, "make_references.py", out)
    return request.param, out


def test_dpft_reads_what_lerobot_saves_now(fresh):
    version, out = fresh
    made = references(out)
    assert made
    for expected in made:
        assert_matches(check_against(expected))
        committed = REFS / f"v{version}" / expected.name  # the committed references are what LeRobot makes
        new, old = read(expected)[0], read(committed)[0]
        assert new.keys() == old.keys() and all(torch.allclose(new[k], old[k], atol=1e-6) for k in new)


def test_lerobot_loads_what_dpft_exports(fresh, tmp_path, monkeypatch):
    version, out = fresh
    monkeypatch.chdir(HERE)  # toy_envs
    base = f"lerobot:{out / 'toy_ddim'}"
    args = ["finetune", "dpo", "--base", base, "--task", TOY, "--rounds", "1", "--states", "8", "--streams", "2"]
    args += ["--final", "last"]  # the fine-tuned weights, whatever they score
    assert (
        cli.main(
            [*args, "--steps-per-round", "10", "--eval-episodes", "2", "--no-progress", "--out", str(tmp_path / "dpo")]
        )
        == 0
    )
    assert cli.main(["export", "lerobot", "--policy", str(tmp_path / "dpo"), "--out", str(tmp_path / "tuned")]) == 0
    e, _ = read(out / "toy_ddim.expected.safetensors")
    n = e["chunk"].shape[1]
    ours = load_policy(tmp_path / "dpo").predict_chunk(e["obs"], e["noise"])[:, :n]
    theirs = lerobot_chunks(version, tmp_path / "tuned", e["obs"], e["noise"], tmp_path)
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert (theirs - e["chunk"]).abs().max().item() > 1e-3  # the fine-tuned weights, not the base's


def test_a_steered_artifact_exports_its_lerobot_base(fresh, tmp_path, monkeypatch):
    version, out = fresh
    monkeypatch.chdir(HERE)
    args = ["finetune", "dsrl", "--base", f"lerobot:{out / 'toy_ddim'}", "--task", TOY, "--steps", "200"]
    args += ["--warmup-steps", "100", "--eval-every", "200", "--eval-episodes", "2", "--no-progress", "--final", "last"]
    assert cli.main([*args, "--out", str(tmp_path / "dsrl")]) == 0
    assert cli.main(["export", "lerobot", "--policy", str(tmp_path / "dsrl"), "--out", str(tmp_path / "x")]) == 0
    e, _ = read(out / "toy_ddim.expected.safetensors")
    theirs = lerobot_chunks(version, tmp_path / "x", e["obs"], e["noise"], tmp_path)
    assert (theirs - e["chunk"]).abs().max().item() <= 1e-5  # the base, unchanged
    assert load_policy(tmp_path / "x" / "dpft").type_name == "dsrl"
