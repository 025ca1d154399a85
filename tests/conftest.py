import sys
from pathlib import Path

import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

sys.path.insert(0, str(Path(__file__).parent))

from dpft.base_policies import ArchConfig, PolicyConfig  # noqa: E402
from dpft.base_policies.policy import policy_type  # noqa: E402

KINDS = [("diffusion", "mlp"), ("diffusion", "unet"), ("flow", "mlp"), ("flow", "unet")]


def tiny_policy(kind: str = "diffusion", backbone: str = "mlp", obs_dim: int = 5, action_dim: int = 3, **arch):
    torch.manual_seed(0)
    a = ArchConfig(**{"hidden_dim": 32, "num_blocks": 1, "unet_dims": (16, 32), **arch})
    cfg = PolicyConfig(type=kind, backbone=backbone, obs_dim=obs_dim, action_dim=action_dim, arch=a)
    return policy_type(kind)(cfg).eval()


@pytest.fixture(params=KINDS, ids=[f"{k}-{b}" for k, b in KINDS])
def policy(request):
    return tiny_policy(*request.param)


class StopAt(BaseCallback):
    """Asks for a stop (what SIGTERM or the first Ctrl-C does) once ``at`` env steps have run."""

    def __init__(self, at: int, k: int) -> None:
        super().__init__()
        self.at, self.k = at, k

    def _on_step(self) -> bool:
        from dpft.finetune.common.interrupt import request_stop

        if self.num_timesteps * self.k == self.at:
            request_stop()
        return True
