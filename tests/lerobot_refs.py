"""Checking dpft's LeRobot reader against recorded LeRobot outputs (shared by the committed-reference
tests and the live round trip)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dpft.base_policies import load_policy

REFS = Path(__file__).parent / "data" / "lerobot"
VERSIONS = ("v0.3.3", "v0.4.4")
CHUNK_ATOL = 1e-5
"""dpft's chunks equal LeRobot's within this (in env units; they agree to the bit on this CPU)."""
LOSS_RTOL = 1e-5


def references(root: Path = REFS) -> list[Path]:
    """Every ``<variant>.expected.safetensors`` under ``root``."""
    return sorted(root.rglob("*.expected.safetensors"))


def read(expected: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(expected), "pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    return load_file(str(expected)), meta


def folder_of(expected: Path) -> Path:
    return expected.with_name(expected.name.split(".")[0])


def check_against(expected: Path, folder: Path | None = None) -> dict[str, float]:
    """Load the variant's folder with dpft and compare with LeRobot's outputs; returns the gaps."""
    e, meta = read(expected)
    policy = load_policy(f"lerobot:{folder or folder_of(expected)}")
    n = e["chunk"].shape[1]
    gaps = {}
    det = policy.predict_chunk(e["obs"], e["noise"])[:, :n]
    gaps["deterministic"] = (det - e.get("ddim_chunk", e["chunk"])).abs().max().item()
    if "ddim_chunk" in e:  # a DDPM policy: its own chain with the per-step noise LeRobot drew
        torch.manual_seed(meta["ddpm_seed"])
        k = len(policy.timesteps)
        steps = [torch.randn(e["noise"].shape) for _ in range(k - 1)] + [torch.zeros(e["noise"].shape)]
        chain, _, _ = policy.sample_chain(e["obs"], e["noise"], torch.stack(steps, 1), 1.0)
        gaps["ddpm"] = (chain[:, :n] - e["chunk"]).abs().max().item()
    torch.manual_seed(meta["loss_seed"])  # LeRobot's compute_loss draws its noise, then its steps
    noise = torch.randn(e["loss_actions"].shape)
    t = torch.randint(0, policy.config.arch.num_train_steps, (noise.shape[0],))
    loss = policy.denoising_loss(e["obs"], e["loss_actions"], t, noise).mean()
    gaps["loss_rel"] = abs(loss.item() - e["loss"].item()) / abs(e["loss"].item())
    return gaps


def assert_matches(gaps: dict[str, float]) -> None:
    assert gaps["deterministic"] <= CHUNK_ATOL, gaps
    assert gaps.get("ddpm", 0.0) <= CHUNK_ATOL, gaps
    assert gaps["loss_rel"] <= LOSS_RTOL, gaps
