"""The update-to-data ratio reaches SB3 as the number of updates it names, fractions included."""

import pytest
import torch

from dpft.base_policies import ConfigError
from dpft.finetune.common.updates import check_utd, optimizer_kwargs, update_frequency
from dpft.finetune.dsrl.train import DSRLConfig
from dpft.finetune.residual.train import ResidualConfig


@pytest.mark.parametrize(
    ("utd", "envs", "freq", "steps"),
    [(1, 1, 1, 1), (2, 1, 1, 2), (1, 4, 1, 4), (0.5, 1, 2, 1), (0.5, 2, 1, 1), (0.25, 2, 2, 1), (0.5, 3, 2, 3)],
)
def test_updates_per_transition_are_what_the_utd_says(utd, envs, freq, steps):
    out = update_frequency(utd, envs)
    assert out == {"train_freq": freq, "gradient_steps": steps}
    assert out["gradient_steps"] / (out["train_freq"] * envs) == pytest.approx(utd)


@pytest.mark.parametrize("utd", [0, -1, 0.3, 1.5, float("nan"), float("inf")])
def test_a_utd_sb3_cannot_run_is_refused_in_one_line(utd):
    with pytest.raises(ConfigError, match="--utd"):
        check_utd(utd)
    for cls in (DSRLConfig, ResidualConfig):
        with pytest.raises(ConfigError, match="--utd"):
            cls(utd=utd)


def test_half_utd_takes_one_gradient_step_every_two_transitions(tmp_path):
    """A real DSRL-NA model on push: after the warm-up, updates = transitions / 2."""
    from stable_baselines3.common.logger import Logger

    from dpft.base_policies.infra.device import resolve_device
    from dpft.finetune.common.run import make_vec_env, resolve_base
    from dpft.finetune.dsrl.train import DSRL

    cfg = DSRLConfig(base="shipped:metaworld-push-v3-mh", utd=0.5, warmup_steps=40, steps=400, out=tmp_path)
    method = DSRL()
    cfg, base = resolve_base(cfg, resolve_device("cpu"))
    model = method.new_model(cfg, base, make_vec_env(cfg, lambda: method.make_env(cfg, base)))
    model.set_logger(Logger(folder=None, output_formats=[]))
    model.learn(total_timesteps=30)  # 10 warm-up transitions (4 env steps each), then 20 more
    assert model._n_updates == 10
    assert model.critic.optimizer.defaults.get("fused") is True  # Adam's one-pass kernel on the CPU


def test_fused_adam_only_where_torch_has_it():
    assert optimizer_kwargs(torch.device("cpu")) == {"fused": True}
    assert optimizer_kwargs(torch.device("meta")) == {}
