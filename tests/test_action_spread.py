"""The base's action spread across noises, and the residual scale a run measures from it."""

import math

import numpy as np
import pytest
import torch
import yaml

from dpft.base_policies import load_policy
from dpft.base_policies.sb3_actor import SquashedMeanActor
from dpft.envs.config import EnvConfig
from dpft.finetune.commands import cli
from dpft.finetune.common.action_spread import SCALE_RANGE, Spread, chunk_spread, residual_scale
from dpft.finetune.dsrl.steered import SteeredPolicy
from dpft.finetune.residual.train import Residual, ResidualConfig


def spread(within, half):
    return Spread(np.array(within, dtype=float), 0.0, np.array(half, dtype=float))


def test_the_scale_is_the_spread_as_a_share_of_half_the_range_rounded_and_clamped():
    assert residual_scale(spread([0.2, 0.4], [1.0, 1.0])) == 0.3
    assert residual_scale(spread([0.2, 0.4], [2.0, 2.0])) == 0.15, "a share of half the range, not env units"
    assert residual_scale(spread([0.301, 0.302], [1.0, 1.0])) == 0.3, "two digits: every process measures the same"
    assert residual_scale(spread([0.0, 0.0], [1.0, 1.0])) == SCALE_RANGE[0], "a deterministic base still gets room"
    assert residual_scale(spread([5.0], [1.0])) == SCALE_RANGE[1]
    assert residual_scale(spread([0.3], [np.inf])) == SCALE_RANGE[0]


def test_the_spread_is_zero_for_a_policy_that_ignores_its_noise():
    policy = load_policy("shipped:metaworld-push-v3-mh")
    cfg = EnvConfig(task="metaworld:push-v3", seed=3)
    s = chunk_spread(policy, cfg, states=1, noises=4)
    assert s.within.shape == (4,) and (s.within > 0).all() and np.allclose(s.half_range, 1.0)
    policy.initial_noise = lambda n, gen=None: policy.__class__.initial_noise(policy, n, gen) * 0  # every noise is zero
    assert np.allclose(chunk_spread(policy, cfg, states=1, noises=4).within, 0.0, atol=1e-6)


def test_a_residual_run_measures_its_scale_on_the_base_unless_given():
    base = load_policy("shipped:metaworld-push-v3-mh")
    cfg = ResidualConfig(task="metaworld:push-v3", reward="sparse_success(terminate=True)")
    measured, line = Residual().measure(cfg, base)
    assert 0.1 < measured.residual_scale < 0.5, "push-mh's base spreads 0.2-0.3 env units across noises"
    assert line.startswith(f"residual scale {measured.residual_scale}: the base's action spread")
    assert "override with --residual-scale" in line
    again, _ = Residual().measure(cfg, base)
    assert again.residual_scale == measured.residual_scale, "a fixed probe: the same number for every run"
    given, line = Residual().measure(ResidualConfig(task="metaworld:push-v3", residual_scale=0.1), base)
    assert (given.residual_scale, line) == (0.1, None)


@pytest.mark.parametrize("seed", [0, 7])
def test_the_run_seed_does_not_change_the_measured_scale(seed):
    base = load_policy("shipped:metaworld-push-v3-mh")
    cfg = ResidualConfig(task="metaworld:push-v3", reward="sparse_success(terminate=True)", seed=seed)
    assert (
        Residual().measure(cfg, base)[0].residual_scale
        == Residual()
        .measure(ResidualConfig(task="metaworld:push-v3", reward="sparse_success(terminate=True)"), base)[0]
        .residual_scale
    )


def test_a_bare_residual_run_prints_and_records_the_measured_scale(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "residual", "--base", "shipped:metaworld-push-v3-mh", "--steps", "300", "--warmup-steps", "0"]
    args += ["--critic-warmup-steps", "0", "--explore-ramp-steps", "0", "--eval-every", "100000", "--final", "last"]
    assert cli.main([*args, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert f"residual scale {recorded['residual_scale']}: the base's action spread" in printed
    assert 0.1 < recorded["residual_scale"] < 0.5


def test_a_bare_residual_run_on_locomotion_takes_the_full_range(tmp_path, capsys):
    """No success flag: the 'return' preset gives the full range and nothing is measured (on the
    medium locomotion bases the measured 0.3-0.4 held the residual below DSRL-NA)."""
    out = tmp_path / "run"
    args = ["finetune", "residual", "--base", "shipped:gym-Hopper-v5-medium", "--steps", "300", "--warmup-steps", "0"]
    args += ["--critic-warmup-steps", "0", "--explore-ramp-steps", "0", "--eval-every", "100000", "--final", "last"]
    assert cli.main([*args, "--eval-episodes", "1", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load((out / "config.yaml").read_text())["residual_scale"] == 1.0
    assert "residual-scale 1 (preset 'return' for gym:Hopper-v5)" in printed
    assert "the base's action spread" not in printed


def test_a_residual_on_a_steered_base_is_sized_by_the_policy_it_steers():
    base = load_policy("shipped:metaworld-push-v3-mh")
    torch.manual_seed(0)
    actor = SquashedMeanActor(base.obs_horizon * base.obs_dim, [16], math.prod(base.noise_shape))
    steered = SteeredPolicy(base, actor, {"action_magnitude": 1.5, "hidden": [16], "variant": "na"})
    cfg = ResidualConfig(task="metaworld:push-v3", reward="sparse_success(terminate=True)")
    on_steered, line = Residual().measure(cfg, steered)
    assert on_steered.residual_scale == Residual().measure(cfg, base)[0].residual_scale
    assert "the underlying base's action spread" in line
