"""Defaults are the benchmarks' recipe: presets fill what the user left unset, and say so."""

from pathlib import Path

import pytest
import yaml

from dpft.base_policies.infra.errors import ConfigError
from dpft.finetune.commands import cli
from dpft.finetune.common.presets import apply_preset, preset_for
from dpft.finetune.dpo.pairs_collect import PairsConfig
from dpft.finetune.dpo.train import DPOConfig, dpo_preset
from dpft.finetune.dsrl.train import DSRL, DSRLConfig
from dpft.finetune.residual.train import ResidualConfig

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "bench"
RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


def test_the_preset_follows_whether_the_task_reports_success():
    assert preset_for("dsrl", "metaworld:push-v3").settings["reward"] == "sparse_success(terminate=True)"
    assert preset_for("dsrl", "gym:Hopper-v5").settings["reward"] == "dense"
    assert "residual_scale" not in preset_for("residual", "metaworld:push-v3").settings, "measured on the base"
    assert preset_for("residual", "gym:Hopper-v5").settings["residual_scale"] == 1.0, "locomotion: the full range"
    for task in ("metaworld:push-v3", "gym:Hopper-v5"):
        assert preset_for("dsrl", task).settings["final"] == "guarded"


def test_a_preset_fills_only_what_was_left_unset_and_says_so():
    cfg, line = apply_preset(DSRLConfig(task="metaworld:drawer-close-v3", eval_episodes=7), "dsrl")
    assert (cfg.reward, cfg.final, cfg.eval_episodes, cfg.preset) == (
        "sparse_success(terminate=True)",
        "guarded",
        7,
        "success",
    )
    assert line.startswith(
        "settings: reward sparse_success(terminate=True), final guarded, layer-norm, utd 2 (preset 'success'"
    )
    assert "override with --reward, --final, --layer-norm, --utd" in line
    assert (cfg.layer_norm, cfg.utd) == (True, 2.0)
    cfg, line = apply_preset(ResidualConfig(task="gym:Walker2d-v5", reward="dense", final="last"), "residual")
    assert (cfg.residual_scale, cfg.eval_episodes, cfg.final) == (1.0, 10, "last")
    assert line == "settings: eval-episodes 10, residual-scale 1 (preset 'return' for gym:Walker2d-v5); " + (
        "override with --eval-episodes, --residual-scale"
    )
    cfg, _ = apply_preset(ResidualConfig(task="gym:Walker2d-v5", residual_scale=0.3), "residual")
    assert cfg.residual_scale == 0.3, "a scale the user gives wins"
    cfg, _ = apply_preset(DSRLConfig(task="metaworld:push-v3"), "dsrl", uses_base=False)
    assert cfg.final == "last", "training from scratch has no base to guard against"


def test_dsrl_critics_come_from_the_preset():
    """LayerNorm critics and two gradient steps per transition where the task reports success (the
    defaults benchmark's dsrl-ln-utd2 rows); locomotion keeps plain critics and one step; a user's
    choice and an old run's config.yaml (which predates the settings) keep theirs."""
    cfg, _ = apply_preset(DSRLConfig(task="metaworld:push-v3"), "dsrl")
    assert (cfg.layer_norm, cfg.utd) == (True, 2.0)
    cfg, line = apply_preset(DSRLConfig(task="gym:Hopper-v5"), "dsrl")
    assert (cfg.layer_norm, cfg.utd) == (False, 1.0) and "no-layer-norm, utd 1 (preset 'return'" in line
    cfg, _ = apply_preset(DSRLConfig(task="metaworld:push-v3", layer_norm=False, utd=0.5), "dsrl")
    assert (cfg.layer_norm, cfg.utd) == (False, 0.5)
    assert DSRL.before_key_existed["layer_norm"] is False and DSRL.before_key_existed["utd"] == 1.0
    assert "utd" not in preset_for("residual", "metaworld:push-v3").settings, "the residual's are its own"


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], (None, None)),
        (["--layer-norm", "--utd", "2"], (True, 2.0)),
        (["--no-layer-norm", "--utd", "1"], (False, 1.0)),
    ],
)
def test_dsrl_critic_flags_stay_flags(flags, expected):
    """A setting the preset fills is unset (None) until a flag sets it; --layer-norm and
    --no-layer-norm stay flags (a plain ``bool | None`` would have asked for a value)."""
    cfg = cli.parse("finetune dsrl", ["--base", "shipped:metaworld-push-v3-mh", *flags])
    assert (cfg.layer_norm, cfg.utd) == expected


PREFERENCE_ROWS = {
    # the mixed-data benchmark's filtered-bc-mode-best-1round row (dpo_bench.md; defaults.md on untuned tasks)
    "metaworld:push-v3": RESULTS / "dpo_bench/push-mh/filtered-bc-mode-best-1round/seed0/config.yaml",
    # five rounds of rollout pairs against the base, +9% / +10% on Hopper- / Walker2d-medium (dpo_pilots/mh.md)
    "gym:Hopper-v5": RESULTS / "dpo_pilots/mh_rollout_r5_fixedref_hopper-medium/config.yaml",
}


@pytest.mark.parametrize("task", sorted(PREFERENCE_ROWS))
def test_a_bare_preference_run_takes_the_recipe_its_benchmark_row_measured(task):
    """Where the task reports success, one round of filtered BC on the best of the mode and an N(0, I)
    sample; on locomotion five rounds of Diffusion-DPO on rollout pairs. The recipe's settings equal
    the recorded config of the row that measured it (a setting that row's code did not have yet ran
    at today's PairsConfig default); DPO's reward, evaluation and final choice are its own."""
    cfg, line = dpo_preset(DPOConfig(task=task))
    row = yaml.safe_load(PREFERENCE_ROWS[task].read_text())
    keys = ["rounds", "loss", "states", "streams", "chunk_states", "chunk_streams", "noise_scales", "pairing"]
    assert {k: getattr(cfg, k) for k in keys} == {k: row[k] if k in row else getattr(PairsConfig(), k) for k in keys}
    assert (cfg.reward, cfg.eval_episodes, cfg.final) == (None, 50, "guarded")
    assert cfg.preset == row.get("preset", cfg.preset)
    assert line.startswith(f"settings: rounds {cfg.rounds}, loss {cfg.loss}, states {cfg.states}")
    assert line.endswith("override with --rounds, --loss, --states, --streams, --chunk-states, --chunk-streams, "
                         "--noise-scales, --pairing")  # fmt: skip


def test_a_preference_setting_the_user_gives_wins_and_d3po_keeps_its_noise():
    cfg, line = dpo_preset(DPOConfig(task="gym:Hopper-v5", rounds=2, loss="filtered-bc"))
    assert (cfg.rounds, cfg.loss, cfg.states) == (2, "filtered-bc", 16)
    assert line.startswith("settings: states 16,")
    cfg, _ = dpo_preset(DPOConfig(task="metaworld:push-v3", loss="d3po", sampler="stochastic"))
    assert (cfg.noise_scales, cfg.states, cfg.pairing) == ([1.0], 128, "best")  # the sampler draws its own noise
    with pytest.raises(ConfigError, match="--streams"):
        DPOConfig(task="metaworld:push-v3", streams=1)  # a given setting is checked at once


@pytest.mark.parametrize(
    "path", sorted([*BENCH.glob("dsrl_*.yaml"), *BENCH.glob("residual_*.yaml")]), ids=lambda p: p.stem
)
def test_benchmark_configs_hold_only_what_differs_from_the_defaults(path):
    """So the defaults cannot drift from what the benchmarks measured without a config saying it."""
    method = path.stem.split("_")[0]
    cfg = cli.read_config_file(path)  # with the shared file it extends
    task = {"metaworld": "metaworld:push-v3", "gym": "gym:Hopper-v5"}[cfg["base"].split(":")[1].split("-")[0]]
    defaults = {**vars({"dsrl": DSRLConfig, "residual": ResidualConfig}[method]()), **preset_for(method, task).settings}
    same = {k: v for k, v in cfg.items() if defaults.get(k) == v and k not in ("base", "final")}
    assert not same, f"{path.name} repeats defaults: {same}"


def test_a_bare_run_prints_and_records_its_preset(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "dsrl", "--base", "shipped:metaworld-push-v3-mh", "--steps", "2080", "--eval-every", "10000"]
    assert (
        cli.main([*args, "--eval-episodes", "2", "--validation-episodes", "2", "--out", str(out), "--no-progress"]) == 0
    )
    printed = capsys.readouterr().out
    assert (
        "settings: reward sparse_success(terminate=True), final guarded, layer-norm, utd 2 (preset 'success' for "
        "metaworld:push-v3)" in printed
    )
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert (recorded["reward"], recorded["final"], recorded["preset"], recorded["batch_size"]) == (
        "sparse_success(terminate=True)",
        "guarded",
        "success",
        128,
    )


def test_a_budget_that_ends_inside_the_warm_up_is_refused(tmp_path, capsys):
    code = cli.main(
        ["finetune", "dsrl", "--base", "shipped:metaworld-push-v3-mh", "--steps", "300", "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--steps 300 ends before learning starts (--warmup-steps 2000" in err
    assert not (tmp_path / "config.yaml").exists()


def test_eval_says_which_reward_its_returns_use(capsys):
    args = ["eval", "--policy", "shipped:metaworld-push-v3-mh", "--episodes", "2", "--envs", "2", "--no-progress"]
    assert cli.main([*args, "--json"]) == 0
    assert '"reward": "dense"' in capsys.readouterr().out
    assert cli.main([*args, "--reward", "sparse_success"]) == 0
    assert "(95% CI; reward sparse_success)" in capsys.readouterr().out
