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
        from dpft.base_policies.infra.interrupt import request_stop

        if self.num_timesteps * self.k == self.at:
            request_stop()
        return True


@pytest.fixture(scope="session")
def obstacle_base(tmp_path_factory) -> Path:
    """A diffusion policy trained once per test session on the toy obstacle task: it passes on the
    left 70% of the time, and success needs the right (DSRL and FIND must move its noise)."""
    from synthetic import bimodal_episodes

    from dpft.base_policies.data import write_robomimic_hdf5
    from dpft.base_policies.train_bc import TrainBCConfig, train_bc

    d = tmp_path_factory.mktemp("obstacle-base")
    write_robomimic_hdf5(d / "demos.hdf5", bimodal_episodes(300, left_fraction=0.7), {"task": "toy_envs:Obstacle-v0"})
    arch = ArchConfig(obs_horizon=1, pred_horizon=8, action_horizon=8, hidden_dim=128, num_blocks=2)
    cfg = TrainBCConfig(
        dataset=d / "demos.hdf5", out=d / "bc", arch=arch, steps=1500, lr=1e-3, warmup_steps=50,
        checkpoint_every=10**9, progress=False,
    )  # fmt: skip
    return train_bc(cfg)
