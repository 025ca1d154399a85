"""Regenerate the committed reference checkpoint and its expected outputs.

Run only when the checkpoint format changes on purpose (and bump FORMAT_VERSION):
    python tests/data/make_reference.py
"""

from pathlib import Path

import torch
from safetensors.torch import save_file

from dpft.base_policies import ArchConfig, DiffusionPolicy, PolicyConfig

HERE = Path(__file__).parent


def main() -> None:
    torch.manual_seed(0)
    cfg = PolicyConfig(
        type="diffusion",
        backbone="mlp",
        obs_dim=3,
        action_dim=2,
        arch=ArchConfig(
            obs_horizon=2,
            pred_horizon=4,
            action_horizon=2,
            hidden_dim=16,
            num_blocks=1,
            time_embed_dim=8,
            num_train_steps=20,
            num_inference_steps=5,
        ),
        action_low=(-1.0, -1.0),
        action_high=(1.0, 1.0),
        task="toy:reference",
    )
    policy = DiffusionPolicy(cfg)
    policy.fit_normalizers(torch.randn(64, 3) * 2 + 1, torch.rand(64, 2) * 1.6 - 0.8)
    policy.eval()
    policy.save(HERE / "reference_policy")
    obs, noise = torch.randn(4, 2, 3), torch.randn(4, 4, 2)
    save_file(
        {"obs": obs, "noise": noise, "actions": policy.predict_chunk(obs, noise)},
        str(HERE / "reference_expected.safetensors"),
    )


if __name__ == "__main__":
    main()
