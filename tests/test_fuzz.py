"""Fuzzing what the bad-input battery does not list: damaged bytes in every file dpft reads, and
generated flag values.

Each example damages one file of a copy of small real artifacts (a policy folder, a finished
``train-bc`` run, a demonstration file, a preference file with its index, a ``--config`` file), or
gives a command a generated value, and runs the command that reads it in-process. The command may
succeed (a damaged digit can still be a valid number) or refuse; a refusal must be exit code 2, one
``error:`` line, no traceback, and every file on disk as it was. Any other exception escaping
``dpft`` fails the example (Hypothesis shrinks it to the smallest damage that does it).

Seeded (``derandomize``): the fast tier runs a fixed set of examples in well under a minute;
``DPFT_FUZZ_EXAMPLES=N`` (the slow tier's ``make test-slow`` sets 200) runs more, and
``DPFT_FUZZ_RANDOM=1`` draws new examples each run (to look for what the fixed ones miss).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import tiny_policy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refusal import one_error_line, snapshot, unchanged
from synthetic import bimodal_episodes

from dpft.base_policies.data import write_robomimic_hdf5
from dpft.base_policies.infra.ranges import declared_ranges, numeric_fields
from dpft.finetune.commands import cli

TOY = "toy_envs:Obstacle-v0"
EXAMPLES = int(os.environ.get("DPFT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES, derandomize=not os.environ.get("DPFT_FUZZ_RANDOM"), deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip
TINY = ["--arch.hidden-dim", "8", "--arch.num-blocks", "1", "--no-progress"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    a = tmp_path_factory.mktemp("fuzz-assets")
    policy = tiny_policy(obs_dim=2, action_dim=2, obs_horizon=1, pred_horizon=8, action_horizon=8)
    policy.config.task = TOY
    policy.save(a / "policy")
    write_robomimic_hdf5(a / "demos.hdf5", bimodal_episodes(20), {"task": TOY})
    assert (
        cli.main(["train-bc", "--dataset", str(a / "demos.hdf5"), "--out", str(a / "run"), "--steps", "4", *TINY]) == 0
    )
    prefs = ["prefs", "collect", "--policy", str(a / "policy"), "--task", TOY, "--states", "2", "--streams", "2"]
    assert cli.main([*prefs, "--envs", "2", "--out", str(a / "prefs.hdf5")]) == 0
    (a / "eval.yaml").write_text(f"policy: {a / 'policy'}\ntask: {TOY}\nepisodes: 1\nenvs: 1\n")
    return a


# Each target: a file (relative to the assets' copy) and the command that reads it ({T}: the copy).
EVAL = ["eval", "--policy", "{T}/policy", "--task", TOY, "--episodes", "1", "--envs", "1", "--json", "--no-progress"]
RESUME = ["train-bc", "--out", "{T}/run", "--resume", "--no-progress"]
TARGETS = {
    "policy/config.json": EVAL,
    "policy/model.safetensors": EVAL,
    "run/config.yaml": RESUME,
    "run/checkpoint/state.json": RESUME,
    "run/checkpoint/state.safetensors": RESUME,
    "run/checkpoint/model.safetensors": RESUME,
    "demos.hdf5": ["train-bc", "--dataset", "{T}/demos.hdf5", "--out", "{T}/new", "--steps", "2", *TINY],
    "prefs.hdf5": ["prefs", "stats", "--files", "{T}/prefs.hdf5"],
    "prefs.jsonl": ["prefs", "stats", "--files", "{T}/prefs.hdf5"],
    "eval.yaml": ["eval", "--config", "{T}/eval.yaml", "--json", "--no-progress"],
}


def json_values() -> st.SearchStrategy:
    # small numbers, and extremes too large to allocate (they fail at once): nothing between that
    # a run would try to fill memory with (a batch size of 10**9 on a 24 GiB machine)
    numbers = st.one_of(st.integers(-1000, 1000), st.sampled_from([2**63, 2**70, -(2**63)]), st.floats())
    leaves = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8))

    def nest(inner: st.SearchStrategy) -> st.SearchStrategy:
        return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)

    return st.recursive(leaves, nest, max_leaves=6)


@st.composite
def damage(draw) -> tuple[str, str, object]:
    """(file, kind of damage, its parameters)."""
    target = draw(st.sampled_from(sorted(TARGETS)))
    kinds = ["truncate", "flip", "bad-utf8", "empty", "folder", "link-loop"]
    if target.endswith((".json", ".yaml", ".jsonl")):
        kinds += ["replace-value", "replace-value", "whole-json"]  # the shapes a parser accepts
    kind = draw(st.sampled_from(kinds))
    if kind == "truncate":
        return target, kind, draw(st.floats(0, 1))
    if kind == "flip":
        return target, kind, draw(st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=4))
    if kind == "bad-utf8":
        return target, kind, (draw(st.floats(0, 1)), draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])))
    if kind in ("replace-value", "whole-json"):
        return target, kind, (draw(st.integers(0, 10**6)), draw(json_values()))
    return target, kind, None


def apply(path: Path, kind: str, arg) -> None:
    if kind == "folder":
        path.unlink()
        path.mkdir()
        return
    if kind == "link-loop":
        path.unlink()
        path.symlink_to(path.name)
        return
    data = path.read_bytes()
    if kind == "truncate":
        data = data[: int(len(data) * arg)]
    elif kind == "flip":
        data = bytearray(data)
        for where, xor in arg:
            data[min(int(len(data) * where), len(data) - 1)] ^= xor
        data = bytes(data)
    elif kind == "bad-utf8":
        at = int(len(data) * arg[0])
        data = data[:at] + arg[1] + data[at:]
    elif kind == "empty":
        data = b""
    elif kind == "whole-json":
        data = json.dumps(arg[1]).encode()
    elif kind == "replace-value":
        data = replace_value(data, path.suffix, *arg).encode()
    path.write_bytes(data)


def replace_value(data: bytes, suffix: str, pick: int, value) -> str:
    """One value somewhere in the parsed file replaced by ``value`` (structure-aware damage)."""
    import yaml

    if suffix == ".jsonl":
        lines = data.decode().splitlines()
        n = pick % len(lines)
        lines[n] = json.dumps(_replace(json.loads(lines[n]), pick, value))
        return "\n".join(lines) + "\n"
    parsed = yaml.safe_load(data) if suffix == ".yaml" else json.loads(data)
    out = _replace(parsed, pick, value)
    return yaml.safe_dump(out) if suffix == ".yaml" else json.dumps(out)


def _replace(tree, pick: int, value):
    """Replace the ``pick``-th node (mod the node count, in depth-first order) of ``tree``."""
    nodes = []

    def walk(node, path):
        nodes.append(path)
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for k, child in children:
            walk(child, (*path, k))

    walk(tree, ())
    path = nodes[pick % len(nodes)]
    if not path:
        return value
    parent = tree
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = value
    return tree


class TooLong(BaseException):
    """A damaged value that is still valid can ask for a long run (``steps: 10**12`` in a run's
    config.yaml): such an example is dropped, not failed."""


def _too_long(signum, frame):
    raise TooLong


def main_within(argv: list[str], seconds: int = 20) -> int:
    """``dpft ARGV`` in this process; an example that runs longer is dropped (:class:`TooLong`)."""
    import signal

    from hypothesis import reject

    old = signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(seconds)
    try:
        return cli.main(argv)  # an exception escaping here is a finding
    except TooLong:
        reject()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_and_check(argv: list[str], root: Path, capsys) -> int:
    before = snapshot(root)
    code = main_within(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), f"exit {code}: {err}"
    if code == 2:
        one_error_line(err)
        unchanged(before, snapshot(root))
    return code


@FUZZ
@given(case=damage())
def test_a_damaged_file_is_refused_in_one_line(case, assets: Path, capsys, monkeypatch):
    target, kind, arg = case
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        shutil.copytree(assets, t, dirs_exist_ok=True, symlinks=True)
        monkeypatch.chdir(t)
        apply(t / target, kind, arg)
        run_and_check([a.format(T=t) for a in TARGETS[target]], t, capsys)


# ----- generated flag values ------------------------------------------------------------------
CHEAP = {  # commands cheap enough to run whole with any accepted value
    "eval": [
        "eval",
        "--policy",
        "{A}/policy",
        "--task",
        TOY,
        "--episodes",
        "1",
        "--envs",
        "1",
        "--json",
        "--no-progress",
    ],
    "train-bc": ["train-bc", "--dataset", "{A}/demos.hdf5", "--out", "{T}/bc", "--steps", "2", *TINY],
}


def flag_values() -> st.SearchStrategy[str]:
    numbers = st.one_of(st.floats(), st.integers(-(10**12), 10**12), st.sampled_from([0, -1, 1, 2**31, 2**63]))
    words = st.sampled_from(["", "nan", "-inf", "inf", "1e999", "0x10", "1_000", "ten", "--", " 1", "1.5", "None"])
    return st.one_of(numbers.map(str), words)


@FUZZ
@given(command=st.sampled_from(sorted(CHEAP)), pick=st.integers(0, 10**6), value=flag_values())
def test_a_generated_flag_value_is_refused_in_one_line_or_runs(command, pick, value, assets, capsys):
    cls = cli.find_command(command).config_cls
    names = [n for n in numeric_fields(cls) if n not in ("steps", "episodes", "envs")]  # keep runs short
    name = names[pick % len(names)]
    with tempfile.TemporaryDirectory() as tmp:
        argv = [a.format(A=assets, T=tmp) for a in CHEAP[command]] + [f"--{name.replace('_', '-')}={value}"]
        try:
            cfg = cli.parse(command, argv[1:])
        except SystemExit as e:  # tyro refuses what is not a number of the flag's type, in its own box
            assert e.code == 2 and "Traceback" not in capsys.readouterr().err
            return
        except Exception:  # refused while parsing: the whole command must say so in one line
            cfg = None
        capsys.readouterr()
        if cfg is not None and abs(getattr(cfg, name) or 0) > 1000:
            return  # valid, and perhaps a long run or a large allocation (--batch-size 2**31): parsing was the test
        before = snapshot(assets)
        code = main_within(argv)
        err = capsys.readouterr().err
        assert code in (0, 2), err
        if code == 2:
            one_error_line(err)
        unchanged(before, snapshot(assets))


@FUZZ
@given(pick=st.integers(0, 10**6), value=st.one_of(st.floats(), st.integers(-(10**12), 10**12)))
def test_every_command_refuses_a_value_outside_its_declared_range(pick, value, capsys):
    """Parsing alone, for every command: a value is accepted exactly when it is in the range the
    config declares (flags and config files take the same path)."""
    from dpft.base_policies.infra.errors import ConfigError
    from dpft.base_policies.infra.ranges import parse_range

    fields = [(name, f) for name in cli.command_names() for f in numeric_fields(cli.find_command(name).config_cls)]
    name, field = fields[pick % len(fields)]
    cls = cli.find_command(name).config_cls
    spec = declared_ranges(cls)[field]
    if (
        isinstance(value, float)
        and "int" in str(cls.__dataclass_fields__[field].type)
        and "float" not in str(cls.__dataclass_fields__[field].type)
    ):
        value = int(value) if value == value and abs(value) != float("inf") else 0
    required = {"set-sampling": ["--out", "x"]}.get(name, [])
    try:
        cli.parse(name, [*required, f"--{field.replace('_', '-')}", str(value)])
        accepted = True
    except ConfigError:
        accepted = False
    except SystemExit:
        accepted = False  # tyro's own refusal (e.g. "1e+20" for an int)
    capsys.readouterr()
    if accepted:
        assert value in parse_range(spec), f"{name} --{field} {value} accepted outside {spec}"
