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


def _lerobot_ddpm(policy, obs: torch.Tensor, noise: torch.Tensor, seed: int) -> torch.Tensor:
    """A DDPM policy's own chain with the per-step noise LeRobot drew from its global RNG after
    ``torch.manual_seed(seed)`` (none at the last step)."""
    torch.manual_seed(seed)
    k = len(policy.timesteps)
    steps = [torch.randn(noise.shape) for _ in range(k - 1)] + [torch.zeros(noise.shape)]
    return policy.sample_chain(obs, noise, torch.stack(steps, 1), 1.0)[0]


@torch.no_grad()
def check_against(expected: Path, folder: Path | None = None) -> dict[str, float]:
    """Load the variant's folder with dpft and compare with LeRobot's outputs; returns the gaps."""
    e, meta = read(expected)
    policy = load_policy(f"lerobot:{folder or folder_of(expected)}")
    n = e["chunk"].shape[1]
    gaps = {}
    if meta["scheduler"] == "DDPM":  # random in LeRobot: its chain with LeRobot's per-step noise
        gaps["chunk"] = (_lerobot_ddpm(policy, e["obs"], e["noise"], meta["ddpm_seed"])[:, :n] - e["chunk"]).abs().max()
        reset = _lerobot_ddpm(policy, e["reset_obs"], e["noise"], meta["ddpm_seed"])[:, :n]
        if "ddim_chunk" in e:  # dpft's deterministic map for it: DDIM on the same levels
            gaps["ddim"] = (policy.predict_chunk(e["obs"], e["noise"])[:, :n] - e["ddim_chunk"]).abs().max()
    else:
        gaps["chunk"] = (policy.predict_chunk(e["obs"], e["noise"])[:, :n] - e["chunk"]).abs().max()
        reset = policy.predict_chunk(e["reset_obs"], e["noise"])[:, :n]  # one observation: padded history
    gaps["reset"] = (reset - e["reset_chunk"]).abs().max()
    torch.manual_seed(meta["loss_seed"])  # LeRobot's compute_loss draws its noise, then its steps
    noise = torch.randn(e["loss_actions"].shape)
    t = torch.randint(0, policy.config.arch.num_train_steps, (noise.shape[0],))
    loss = policy.denoising_loss(e["obs"], e["loss_actions"], t, noise).mean()
    gaps = {k: float(v) for k, v in gaps.items()}
    gaps["loss_rel"] = abs(loss.item() - e["loss"].item()) / abs(e["loss"].item())
    return gaps


def assert_matches(gaps: dict[str, float]) -> None:
    assert all(v <= CHUNK_ATOL for k, v in gaps.items() if k != "loss_rel"), gaps
    assert gaps["loss_rel"] <= LOSS_RTOL, gaps
