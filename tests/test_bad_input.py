"""The bad-input battery: every mistake a user can make ends in one clear line, exit code 2, and
leaves everything already on disk as it was.

One table, one test. To add a case, add a row: an id, the command line (``{A}`` is the folder of
shared assets below, ``{T}`` the case's own temporary folder), the words the message must
contain, and optionally a ``setup(T)`` that writes the files the case needs. Shared assets
(built once): ``{A}/policy`` (a tiny diffusion policy for the toy obstacle task), ``{A}/demos.hdf5``,
``{A}/run`` (a finished ``train-bc`` run), ``{A}/exists.hdf5`` and ``{A}/afile`` (plain files).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import tiny_policy
from refusal import snapshot
from synthetic import bimodal_episodes

from dpft.base_policies.data import write_robomimic_hdf5
from dpft.finetune.commands import cli

TOY = "toy_envs:Obstacle-v0"


@dataclass
class Case:
    id: str
    argv: str
    says: tuple[str, ...]
    setup: Callable[[Path], None] | None = None


def _write(rel: str, text: str) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        (t / rel).write_text(text)

    return setup


def _policy_with(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """A copy of the shared policy whose config.json is edited."""

    def setup(t: Path) -> None:
        import shutil

        shutil.copytree(ASSETS / "policy", t / "p")
        meta = json.loads((t / "p" / "config.json").read_text())
        edit(meta)
        (t / "p" / "config.json").write_text(json.dumps(meta))

    return setup


def _truncate_weights(t: Path) -> None:
    import shutil

    shutil.copytree(ASSETS / "policy", t / "p")
    data = (t / "p" / "model.safetensors").read_bytes()
    (t / "p" / "model.safetensors").write_bytes(data[: len(data) // 2])


def _no_weights(t: Path) -> None:
    import shutil

    shutil.copytree(ASSETS / "policy", t / "p")
    (t / "p" / "model.safetensors").unlink()


def _hdf5(build: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        with h5py.File(t / "d.hdf5", "w") as f:
            build(f)

    return setup


def _no_data_group(f: h5py.File) -> None:
    f.create_dataset("something", data=np.zeros(3))


def _no_actions(f: h5py.File) -> None:
    f.create_group("data/demo_0").create_dataset("obs", data=np.zeros((5, 2), np.float32))


def _nan_actions(f: h5py.File) -> None:
    g = f.create_group("data/demo_0")
    g.create_dataset("obs", data=np.zeros((5, 2), np.float32))
    g.create_dataset("actions", data=np.full((5, 2), np.nan, np.float32))


def _obs_group(f: h5py.File) -> None:
    g = f.create_group("data/demo_0")
    g.create_dataset("obs/b_pos", data=np.zeros((5, 2), np.float32))
    g.create_dataset("obs/a_vel", data=np.zeros((5, 2), np.float32))
    g.create_dataset("actions", data=np.zeros((5, 2), np.float32))


def _nan_weights(t: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(ASSETS / "policy", t / "p")
    state = load_file(str(t / "p" / "model.safetensors"))
    key = next(iter(state))
    state[key] = state[key].clone().fill_(float("nan"))
    save_file(state, str(t / "p" / "model.safetensors"))


def _damaged_checkpoint(t: Path) -> None:
    import shutil

    shutil.copytree(ASSETS / "run", t / "run")
    (t / "run" / "checkpoint" / "state.json").write_text("{not json")


def _run_with(rel: str, data: bytes) -> Callable[[Path], None]:
    """A copy of the shared run whose file ``rel`` holds ``data``."""

    def setup(t: Path) -> None:
        import shutil

        shutil.copytree(ASSETS / "run", t / "run")
        (t / "run" / rel).write_bytes(data)

    return setup


def _obs_lengths_differ(f: h5py.File) -> None:
    g = f.create_group("data/demo_0")
    g.create_dataset("obs/a", data=np.zeros((5, 2), np.float32))
    g.create_dataset("obs/b", data=np.zeros((4, 2), np.float32))
    g.create_dataset("actions", data=np.zeros((5, 2), np.float32))


def _link_loop(t: Path) -> None:
    (t / "loop").symlink_to("loop")


def _ddim_pairs(t: Path) -> None:
    """Pairs from `dpft prefs collect` with its default sampler (ddim: no chains kept)."""
    argv = ["prefs", "collect", "--policy", str(ASSETS / "policy"), "--task", TOY, "--states", "2", "--streams", "2"]
    assert cli.main([*argv, "--envs", "2", "--out", str(t / "p.hdf5")]) == 0


def _config_only_run(t: Path) -> None:
    import shutil

    (t / "run").mkdir()
    shutil.copy(ASSETS / "run" / "config.yaml", t / "run" / "config.yaml")


CASES = [
    # ----- output paths: checked before any work, existing data never replaced -----
    Case("collect-out-exists", "collect --task metaworld:push-v3 --episodes 1 --out {A}/exists.hdf5", ("already exists", "--overwrite")),
    Case("collect-out-extension", "collect --task metaworld:push-v3 --episodes 1 --out {T}/demos.txt", ("unknown file type",)),
    Case("collect-out-under-a-file", "collect --task metaworld:push-v3 --episodes 1 --out {A}/afile/d.hdf5", ("is a file, not a folder",)),
    Case("collect-out-is-a-folder", "collect --task metaworld:push-v3 --episodes 1 --out {T}/x.hdf5", ("is a folder",), lambda t: (t / "x.hdf5").mkdir()),
    Case("eval-video-exists", "eval --policy {A}/policy --episodes 1 --video {T}/v.mp4", ("already exists",), _write("v.mp4", "x")),
    Case("eval-video-extension", "eval --policy {A}/policy --episodes 1 --video {T}/v.avi", ("unknown file type",)),
    Case("train-bc-out-is-a-file", "train-bc --dataset {A}/demos.hdf5 --out {A}/afile", ("is a file",)),
    Case("overwrite-with-bad-input-loses-nothing", "train-bc --dataset {T}/none.hdf5 --out {A}/run --overwrite", ("none.hdf5",)),
    Case("train-bc-out-holds-a-run", "train-bc --dataset {A}/demos.hdf5 --out {A}/run", ("already holds a run", "--resume")),
    Case("dsrl-out-holds-a-run", "finetune dsrl --base {A}/policy --out {A}/run", ("already holds a run",)),
    Case("residual-out-under-a-file", "finetune residual --base {A}/policy --out {A}/afile/r", ("is a file, not a folder",)),
    # ----- policy folders and checkpoints -----
    Case("policy-missing", "eval --policy {T}/nothing", ("does not exist",)),
    Case("policy-no-config", "eval --policy {T}/p", ("config.json is missing",), lambda t: (t / "p").mkdir()),
    Case("policy-config-not-json", "eval --policy {T}/p", ("not valid JSON",), _write("p/config.json", "{oops")),
    Case("policy-config-no-type", "eval --policy {T}/p", ("no 'type' field",), _write("p/config.json", "{}")),
    Case("policy-unknown-type", "eval --policy {T}/p", ("unknown policy type",), _policy_with(lambda m: m.update(type="mystery"))),
    Case("policy-format-version", "eval --policy {T}/p", ("format_version",), _policy_with(lambda m: m.update(format_version=99))),
    Case("policy-no-weights", "eval --policy {T}/p", ("model.safetensors",), _no_weights),
    Case("policy-truncated-weights", "eval --policy {T}/p", ("model.safetensors",), _truncate_weights),
    Case("shipped-unknown", "eval --policy shipped:nope", ("no shipped policy",)),
    Case("resume-damaged-checkpoint", "train-bc --out {T}/run --resume", ("is corrupt",), _damaged_checkpoint),
    Case("resume-no-run", "train-bc --out {T}/empty --resume", ("cannot resume",)),
    Case("resume-nothing-saved", "train-bc --out {T}/run --resume", ("has no checkpoint yet",), _config_only_run),
    Case("resume-changed-setting", "train-bc --out {A}/run --resume --lr 0.5", ("--lr 0.5", "settings differ")),
    # ----- tasks -----
    Case("task-unknown-family", "eval --policy {A}/policy --task nofamily:Foo-v0", ("unknown task",)),
    Case("task-unknown-gym-id", "eval --policy {A}/policy --task NoSuchEnv-v9", ("unknown task",)),
    Case("task-unknown-metaworld", "eval --policy {A}/policy --task metaworld:fly-v3", ("fly",)),
    Case("task-policy-shape-mismatch", "eval --policy {A}/policy --task metaworld:push-v3", ("observations of size",)),
    Case("base-task-mismatch", "finetune residual --base {A}/policy --task metaworld:push-v3 --out {T}/r", ("observations of size",)),
    # ----- rewards -----
    Case("reward-module-missing", "eval --policy {A}/policy --reward no_such_module:fn", ("cannot import module",)),
    Case("reward-attribute-missing", "eval --policy {A}/policy --reward rmod:nothing", ("has no attribute",), _write("rmod.py", "x = 1\n")),
    Case("reward-unparsable", "eval --policy {A}/policy --reward 'sparse_success(terminate='", ("cannot parse",)),
    Case("reward-unknown-name", "eval --policy {A}/policy --reward shiny_reward", ("shiny_reward",)),
    # ----- numbers out of range, unknown choices -----
    Case("eval-episodes-zero", "eval --policy {A}/policy --episodes 0", ("--episodes",)),
    Case("eval-envs-zero", "eval --policy {A}/policy --envs 0", ("--envs",)),
    Case("collect-episodes-zero", "collect --task metaworld:push-v3 --episodes 0 --out {T}/d.hdf5", ("--episodes",)),
    Case("collect-negative-noise", "collect --task metaworld:push-v3 --action-noise -1 --out {T}/d.hdf5", ("--action-noise",)),
    Case("residual-scale-zero", "finetune residual --base {A}/policy --out {T}/r --residual-scale 0", ("(0, 1]",)),
    Case("residual-scale-above-one", "finetune residual --base {A}/policy --out {T}/r --residual-scale 2", ("(0, 1]",)),
    Case("residual-demos-missing", "finetune residual --base {A}/policy --out {T}/r --demos {T}/none.hdf5", ("none.hdf5", "does not exist")),
    Case("residual-demos-with-ppo", "finetune residual --base {A}/policy --out {T}/r --demos {T}/none.hdf5 --algo ppo", ("off-policy per-step",)),
    Case("residual-unknown-algo", "finetune residual --base {A}/policy --out {T}/r --algo ddpg", ("unknown --algo",)),
    Case("dsrl-unknown-variant", "finetune dsrl --base {A}/policy --out {T}/r --variant foo", ("unknown --variant",)),
    Case("dsrl-target-kl-unreachable", "finetune dsrl --base {A}/policy --out {T}/r --target-kl 1", ("--target-kl",)),
    Case("finetune-steps-zero", "finetune residual --base {A}/policy --out {T}/r --steps 0", ("--steps",)),
    Case("device-unknown", "eval --policy {A}/policy --device tpu", ("tpu",)),
    # a GPU that is not there: "no CUDA GPU" here, "only N CUDA device(s)" on a machine with GPUs
    Case("device-cuda-not-there-eval", "eval --policy {A}/policy --device cuda:99", ("--device cuda:99",)),
    Case("device-cuda-not-there-dpo", "finetune dpo --base {A}/policy --out {T}/r --device cuda:99", ("--device cuda:99",)),
    Case("vectorization-unknown", "eval --policy {A}/policy --vectorization threads", ("--vectorization",)),
    Case("unknown-command", "finetune nope --base {A}/policy", ("unknown command",)),
    # ----- config files -----
    Case("config-missing", "eval --config {T}/nope.yaml", ("does not exist",)),
    Case("d3po-on-pairs-without-chains", "finetune dpo --base {A}/policy --prefs {T}/p.hdf5 --loss d3po --out {T}/r", ("--sampler stochastic",), _ddim_pairs),
    # ----- classes of file-system and byte errors (base_policies/infra/files.py), one example each -----
    Case("config-not-utf8", "eval --config {T}/c.yaml", ("not UTF-8",), lambda t: (t / "c.yaml").write_bytes(b"episodes: \xff\n")),
    Case("config-is-a-folder", "train-bc --config {T}", ("is a folder",)),
    Case("config-flag-without-value", "train-bc --dataset {A}/demos.hdf5 --out {T}/r --config", ("is a folder",)),
    Case("policy-is-a-link-loop", "eval --policy {T}/loop", ("loop",), _link_loop),
    Case("policy-config-not-utf8", "eval --policy {T}/p", ("not UTF-8",), lambda t: ((t / "p").mkdir(), (t / "p" / "config.json").write_bytes(b'{"type": "\xc3\x28"}'))),
    Case("resume-config-yaml-not-utf8", "train-bc --out {T}/run --resume", ("config.yaml", "not UTF-8"), _run_with("config.yaml", b"steps: \xff\n")),
    Case("resume-state-not-utf8", "train-bc --out {T}/run --resume", ("state", "not UTF-8"), _run_with("checkpoint/state.json", b"{\"step\": \"\xff\"}")),
    Case("resume-state-of-another-shape", "train-bc --out {T}/run --resume", ("state.json", "layout dpft writes"), _run_with("checkpoint/state.json", b"[1, 2]")),
    Case("resume-state-step-not-a-number", "train-bc --out {T}/run --resume", ("state.json", "'step'"), _run_with("checkpoint/state.json", b'{"step": "x"}')),
    Case("dataset-obs-lengths-differ", "train-bc --dataset {T}/d.hdf5 --out {T}/r --obs-keys a b", ("different lengths",), _hdf5(_obs_lengths_differ)),
    Case("config-not-yaml", "eval --config {T}/c.yaml", ("is not valid",), _write("c.yaml", "a: [1, 2\n")),
    Case("config-not-a-mapping", "eval --config {T}/c.yaml", ("mapping",), _write("c.yaml", "- 1\n- 2\n")),
    Case("config-unknown-key", "eval --config {T}/c.yaml", ("unknown", "epsiodes"), _write("c.yaml", "epsiodes: 3\n")),
    Case("config-float-for-int", "eval --config {T}/c.yaml", ("'episodes'", "integer", "10.5"), _write("c.yaml", "episodes: 10.5\n")),
    Case("config-word-for-int", "eval --config {T}/c.yaml", ("'episodes'", "ten"), _write("c.yaml", "episodes: ten\n")),
    Case("config-string-for-bool", "eval --config {T}/c.yaml", ("'json'",), _write("c.yaml", "json: maybe\n")),
    Case("config-nested-wrong-type", "train-bc --config {T}/c.yaml --out {T}/r", ("'hidden_dim'",), _write("c.yaml", "arch:\n  hidden_dim: wide\n")),
    # ----- datasets -----
    Case("dataset-missing", "train-bc --dataset {T}/none.hdf5 --out {T}/r", ("none.hdf5",)),
    Case("dataset-not-hdf5", "train-bc --dataset {T}/d.hdf5 --out {T}/r", ("d.hdf5",), _write("d.hdf5", "text, not HDF5")),
    Case("dataset-no-data-group", "train-bc --dataset {T}/d.hdf5 --out {T}/r", ("'data'",), _hdf5(_no_data_group)),
    Case("dataset-no-actions", "train-bc --dataset {T}/d.hdf5 --out {T}/r", ("actions",), _hdf5(_no_actions)),
    Case("dataset-nan", "train-bc --dataset {T}/d.hdf5 --out {T}/r", ("NaN",), _hdf5(_nan_actions)),
    Case("dataset-no-dataset-flag", "train-bc --out {T}/r", ("--dataset",)),
    Case("dataset-obs-keys-unordered", "train-bc --dataset {T}/d.hdf5 --out {T}/r", ("--obs-keys",), _hdf5(_obs_group)),
    Case("dataset-unknown-filter-key", "train-bc --dataset {A}/demos.hdf5 --out {T}/r --filter-key valid", ("valid",)),
    # ----- policies with bad contents -----
    Case("policy-config-type-not-a-name", "eval --policy {T}/p", ("'type' must name",), _policy_with(lambda m: m.update(type=[]))),
    Case("policy-config-missing-key", "eval --policy {T}/p", ("action_dim",), _policy_with(lambda m: m.pop("action_dim"))),
    Case("policy-config-wrong-type", "eval --policy {T}/p", ("pred_horizon",), _policy_with(lambda m: m["arch"].update(pred_horizon="8"))),
    Case("policy-nan-weights", "eval --policy {T}/p", ("non-finite",), _nan_weights),
    # ----- a user's own task module, found in the working folder -----
    Case("processes-zero", "eval --policy {A}/policy --episodes 2 --processes 0", ("--processes 0", "at least 1")),
    Case("processes-not-a-number", "eval --policy {A}/policy --episodes 2 --processes two", ("--processes 'two'",)),
    Case("processes-more-than-episodes", "eval --policy {A}/policy --episodes 2 --envs 4 --processes 3", ("3 processes", "--processes 2")),
    Case("processes-for-a-one-process-command", "prefs merge --files {T}/a.hdf5 {T}/b.hdf5 --out {T}/c.hdf5 --processes 2", ("runs in one process only",)),
    Case("processes-dpo-batch-does-not-split", "finetune dpo --base {A}/policy --out {T}/r --batch-pairs 5 --processes 2", ("--batch-pairs 5", "multiple of 2")),
    Case("set-sampling-nothing-to-change", "set-sampling --policy {A}/policy --out {T}/s", ("nothing to change",)),
    Case("set-sampling-horizon-too-long", "set-sampling --policy {A}/policy --out {T}/s --action-horizon 99", ("--action-horizon", "pred_horizon")),
    Case("set-sampling-steps-zero", "set-sampling --policy {A}/policy --out {T}/s --denoising-steps 0", ("--denoising-steps", ">= 1")),
    Case("set-sampling-out-holds-files", "set-sampling --policy {A}/policy --out {A}/run --action-horizon 1", ("--overwrite",)),
    Case("threads-zero", "eval --policy {A}/policy --episodes 1 --threads 0", ("--threads 0", "at least 1")),
    Case("user-task-module-error", "eval --policy {A}/policy --task mytask:Broken-v0", ("Broken-v0",), _write("mytask.py", "import gymnasium\ngymnasium.register('Broken-v0', entry_point='mytask:Nope')\n")),
]  # fmt: skip

ASSETS: Path = Path()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    global ASSETS
    ASSETS = a = tmp_path_factory.mktemp("assets")
    policy = tiny_policy(obs_dim=2, action_dim=2, obs_horizon=1, pred_horizon=8, action_horizon=8)
    policy.config.task = TOY
    policy.save(a / "policy")
    write_robomimic_hdf5(a / "demos.hdf5", bimodal_episodes(20), {"task": TOY})
    argv = ["train-bc", "--dataset", str(a / "demos.hdf5"), "--out", str(a / "run"), "--steps", "4"]
    argv += ["--arch.hidden-dim", "8", "--arch.num-blocks", "1", "--no-progress"]
    assert cli.main(argv) == 0
    (a / "exists.hdf5").write_text("precious demos")
    (a / "afile").write_text("a plain file")
    return a


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, assets: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a user's module (rewards, tasks) is found in the working dir
    if case.setup:
        case.setup(tmp_path)
    before = snapshot(assets, tmp_path)
    argv = [a.format(A=assets, T=tmp_path) for a in shlex.split(case.argv)]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}; stderr: {err}"
    assert err.startswith("error: ") and "Traceback" not in err, err
    first, *rest = err.splitlines()
    assert not rest or case.id == "unknown-command", err  # an unknown command also lists the commands
    for words in case.says:
        assert words in first, first
    after = snapshot(assets, tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that was there changed"
    assert set(before) <= set(after), "a file that was there is gone"
    new = {Path(k).name for k in set(after) - set(before)}
    assert new <= {".lock"}, f"files written by a command that failed: {new}"


def test_the_battery_is_large_enough():
    assert len(CASES) >= 40


def test_a_task_module_in_the_working_folder_is_found(assets: Path, tmp_path: Path, capsys, monkeypatch):
    """``--task mymod:Env-v0`` imports mymod from the folder dpft runs in, with no PYTHONPATH (as
    ``--reward`` always did)."""
    (tmp_path / "my_obstacle_tasks.py").write_text(
        "import gymnasium\nfrom toy_envs import Obstacle\ngymnasium.register('MyObstacle-v0', entry_point=Obstacle)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])  # as the `dpft` script runs
    argv = ["eval", "--policy", str(assets / "policy"), "--task", "my_obstacle_tasks:MyObstacle-v0"]
    assert cli.main([*argv, "--episodes", "2", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == 2


def test_overwrite_replaces_a_run_only_when_asked(assets: Path, tmp_path: Path):
    import shutil

    shutil.copytree(assets / "run", tmp_path / "run")
    argv = ["train-bc", "--dataset", str(assets / "demos.hdf5"), "--out", str(tmp_path / "run"), "--steps", "2"]
    argv += ["--arch.hidden-dim", "8", "--arch.num-blocks", "1", "--no-progress"]
    assert cli.main(argv) == 2  # the run is there: refused
    assert cli.main([*argv, "--overwrite"]) == 0
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["step"] == 2


def test_overwrite_from_a_config_file_and_a_flag(tmp_path: Path):
    """The output check runs after the flags apply: a config file naming an existing --out plus
    --overwrite on the command line replaces it."""
    (tmp_path / "demos.hdf5").write_text("old")
    (tmp_path / "c.yaml").write_text(f"task: metaworld:push-v3\nepisodes: 1\nout: {tmp_path / 'demos.hdf5'}\n")
    assert cli.main(["collect", "--config", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    assert cli.main(["collect", "--config", str(tmp_path / "c.yaml"), "--overwrite", "--no-progress"]) == 0
    assert (tmp_path / "demos.hdf5").read_bytes()[:4] == b"\x89HDF"


def test_an_unknown_mujoco_gl_is_one_line(assets: Path):
    """MuJoCo reads MUJOCO_GL once, when first imported, so this runs in a fresh process."""
    import os
    import subprocess

    env = {**os.environ, "MUJOCO_GL": "broken", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "dpft.finetune", "eval", "--policy", "shipped:metaworld-push-v3"]
    res = subprocess.run([*argv, "--episodes", "1", "--no-progress"], env=env, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr
    assert "MUJOCO_GL" in res.stderr and "Traceback" not in res.stderr
