"""Every numeric setting of every command declares its range, and one validator enforces it for
flags, ``--config`` files and a run's own ``config.yaml`` alike."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from dpft.base_policies.infra.errors import ConfigError
from dpft.base_policies.infra.ranges import check_ranges, declared_ranges, numeric_fields, parse_range
from dpft.finetune.commands import cli


def config_classes() -> list[type]:
    """Every command's config dataclass and the dataclasses nested in it (ArchConfig)."""
    found: list[type] = []

    def walk(cls: type) -> None:
        if cls in found:
            return
        found.append(cls)
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint)

    for name in cli.command_names():
        walk(cli.find_command(name).config_cls)
    return found


@pytest.mark.parametrize("cls", config_classes(), ids=lambda c: c.__name__)
def test_every_numeric_setting_declares_a_range_that_holds_its_default(cls):
    ranges = declared_ranges(cls)
    missing = [n for n in numeric_fields(cls) if n not in ranges]
    assert not missing, f"{cls.__name__}: no range declared for {missing} (add them to RANGES)"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, spec in ranges.items():
        assert name in fields, f"{cls.__name__}.RANGES names {name!r}, which is not a setting"
        default = fields[name].default
        if default is not None and default is not dataclasses.MISSING:
            assert default in parse_range(spec), f"{cls.__name__}.{name}: default {default} outside {spec}"


@pytest.mark.parametrize(
    ("spec", "inside", "outside"),
    [
        ("> 0", [1e-12, 5, 1e300], [0, -1, math.inf, math.nan]),
        (">= 1", [1, 2], [0, 0.5, math.inf]),
        ("[0, 1)", [0, 0.999], [1, -0.1, math.nan]),
        ("(0, 1]", [1, 0.5], [0, 1.0001]),
        ("any", [-1e300, 0, 3], [math.inf, -math.inf, math.nan]),
    ],
)
def test_ranges_read_as_written_and_never_hold_nan_or_infinity(spec, inside, outside):
    r = parse_range(spec)
    assert all(x in r for x in inside) and not any(x in r for x in outside)


@pytest.mark.parametrize(
    "argv",
    [
        ["finetune", "dsrl", "--lr", "inf"],
        ["finetune", "dsrl", "--lr", "nan"],
        ["train-bc", "--lr", "-1"],
        ["finetune", "residual", "--gamma", "1.5"],
        ["finetune", "dpo", "--flip-labels", "2"],
        ["train-bc", "--arch.hidden-dim", "0"],
        ["eval", "--episodes", "-3"],
        ["prefs", "collect", "--noise-scales", "-1"],  # a list: each of its numbers
    ],
)
def test_a_flag_outside_its_range_is_one_line_naming_the_flag(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {argv[-2]} must be") and len(err.splitlines()) == 1, err


def test_a_config_file_and_a_runs_config_yaml_are_checked_the_same_way(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("lr: .inf\n")
    assert cli.main(["finetune", "dsrl", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "--lr must be in (0, 1], got inf" in capsys.readouterr().err
    from dpft.base_policies.infra.records import from_dict
    from dpft.finetune.dsrl.train import DSRLConfig

    with pytest.raises(ConfigError, match="--gamma must be in"):
        from_dict(DSRLConfig, {"gamma": -0.5})  # how --resume reads config.yaml back


def test_nested_settings_are_named_with_their_dotted_flag():
    from dpft.base_policies.train_bc import TrainBCConfig

    cfg = TrainBCConfig()
    cfg.arch.num_inference_steps = -2
    with pytest.raises(ConfigError, match="--arch.num-inference-steps must be >= 1"):
        check_ranges(cfg)
