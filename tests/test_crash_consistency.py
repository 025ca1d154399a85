"""A kill at any step of a checkpoint (or policy) write leaves one complete copy on disk.

Not by random timing: a subprocess is killed (``os._exit(137)``, no cleanup runs) at each
step of the writer in turn, through its fault-injection hook (``DPFT_KILL_AT=STEP[:N]``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import bimodal_episodes

from dpft.base_policies.data import write_robomimic_hdf5
from dpft.base_policies.infra.run_folder import RunFolder
from dpft.base_policies.infra.state_io import FILE_STEPS, PUBLISH_STEPS, atomic_dir, atomic_write_text, recover_dir
from dpft.finetune.commands import cli

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import os, sys
from pathlib import Path
from dpft.base_policies.infra.state_io import atomic_dir

path, kill_at = Path(sys.argv[1]), sys.argv[2]

def write(tag):
    with atomic_dir(path) as tmp:
        (tmp / "data.bin").write_bytes(tag.encode() * 100_000)
        if kill_at == "body" and tag == "B":
            os._exit(137)  # killed while the new copy is half written
        (tmp / "tag").write_text(tag)

write("A")
os.environ["DPFT_KILL_AT"] = kill_at
write("B")
"""


def complete_copy(path: Path) -> str:
    """The tag of the copy at ``path``, after checking that every file of that copy is whole."""
    tag = (path / "tag").read_text()
    assert (path / "data.bin").read_bytes() == tag.encode() * 100_000
    return tag


@pytest.mark.slow
@pytest.mark.parametrize("step", ["body", *PUBLISH_STEPS])
def test_a_kill_at_any_step_of_a_folder_write_leaves_a_complete_copy(tmp_path, step):
    path = tmp_path / "checkpoint"
    res = subprocess.run([sys.executable, "-c", WRITER, str(path), step], capture_output=True, text=True)
    assert res.returncode == 137, res.stderr
    recover_dir(path)  # what every reader and writer of a run folder does first
    after_publish = step in PUBLISH_STEPS and PUBLISH_STEPS.index(step) >= PUBLISH_STEPS.index("published")
    expected = "B" if after_publish else "A"
    assert complete_copy(path) == expected
    assert not list(tmp_path.glob(".checkpoint.*.tmp"))  # stale temporaries are cleaned
    with atomic_dir(path) as tmp:
        (tmp / "data.bin").write_bytes(b"C" * 100_000)
        (tmp / "tag").write_text("C")
    assert complete_copy(path) == "C"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # nothing left behind


FILE_WRITER = """
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from synthetic import bimodal_episodes
from dpft.base_policies.data import write_robomimic_hdf5
from dpft.base_policies.infra.state_io import atomic_write_text

path, kill_at = Path(sys.argv[1]), sys.argv[2]
write = {
    "text": lambda tag: atomic_write_text(path, tag * 100_000),
    "demos": lambda tag: write_robomimic_hdf5(path, bimodal_episodes(5), {"tag": tag}),
}[path.stem]
write("A")
os.environ["DPFT_KILL_AT"] = kill_at
write("B")
"""


def written_tag(path: Path) -> str:
    """Which write a whole file holds (and that it is whole)."""
    if path.suffix == ".hdf5":
        from dpft.base_policies.data import load_demonstrations

        return load_demonstrations(path).attrs["env_args"]["tag"]
    text = path.read_text()
    assert text in ("A" * 100_000, "B" * 100_000)
    return text[0]


@pytest.mark.parametrize("step", FILE_STEPS)
@pytest.mark.parametrize("name", ["text.json", "demos.hdf5"])
def test_a_kill_at_any_step_of_a_file_write_leaves_a_whole_file_and_no_leftover(tmp_path, step, name):
    """A single-file write (config.yaml, final_eval.json, a demonstration file, ...) killed at each
    step: the file is whole (old or new), and the next write of it -- or opening the run folder --
    deletes the temporary the kill left."""
    path = tmp_path / name
    argv = [sys.executable, "-c", FILE_WRITER, str(path), step, str(Path(__file__).parent)]
    res = subprocess.run(argv, capture_output=True, text=True)
    assert res.returncode == 137, res.stderr
    assert written_tag(path) == ("B" if step == "file-published" else "A")
    if name.endswith(".hdf5"):
        from synthetic import bimodal_episodes

        from dpft.base_policies.data import write_robomimic_hdf5

        write_robomimic_hdf5(path, bimodal_episodes(5), {"tag": "C"})
    else:
        atomic_write_text(path, "C")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_opening_a_run_folder_deletes_the_leftovers_of_killed_single_file_writes(tmp_path, dataset):
    run = tmp_path / "run"
    run.mkdir()
    for name in (".config.yaml.a1b2c3d4.tmp", ".final_eval.json.zz_9ZZ9z.tmp", ".guarded.json.q1w2e3r4.trash"):
        (run / name).write_text("half")
    (run / ".notes.tmp").write_text("a user's file")  # not a temporary's name: left alone
    argv = ["train-bc", "--dataset", str(dataset), "--out", str(run), "--steps", "2", "--arch.hidden-dim", "8"]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock", ".notes.tmp"]


@pytest.fixture()
def dataset(tmp_path):
    path = tmp_path / "demos.hdf5"
    write_robomimic_hdf5(path, bimodal_episodes(40), {"task": "toy_envs:Obstacle-v0"})
    return path


def train_bc(dataset: Path, out: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    env.pop("DPFT_KILL_AT", None)
    if kill_at:
        env["DPFT_KILL_AT"] = kill_at
    argv = ["train-bc", "--dataset", str(dataset), "--out", str(out), "--steps", "60", "--checkpoint-every", "20"]
    argv += ["--batch-size", "16", "--no-progress", "--arch.hidden-dim", "16", "--arch.num-blocks", "1", *extra]
    return subprocess.run(
        [sys.executable, "-m", "dpft.finetune", *argv], capture_output=True, text=True, env=env, cwd=ROOT
    )


def test_a_run_killed_between_the_renames_of_a_checkpoint_resumes_from_the_last_one(tmp_path, dataset):
    """The moment that used to lose the whole run: the old checkpoint moved aside, the new one not
    yet in place. ``--resume`` now continues from the previous checkpoint instead of step 0."""
    out = tmp_path / "run"
    res = train_bc(dataset, out, kill_at="moved-aside:1")  # during the second checkpoint write
    assert res.returncode == 137
    assert not (out / "checkpoint").exists() and (out / ".checkpoint.old").exists()
    assert RunFolder(out).has_checkpoint()  # it sees the copy moved aside (and changes nothing)
    assert json.loads((out / ".checkpoint.old" / "state.json").read_text())["step"] == 20
    res = train_bc(dataset, out, "--resume")
    assert res.returncode == 0, res.stderr
    assert "step 20 -> 60" in res.stdout + res.stderr
    assert (out / "policy" / "config.json").exists()


def test_resume_with_nothing_to_resume_is_refused(tmp_path, dataset, capsys):
    out = tmp_path / "run"
    assert train_bc(dataset, out, kill_at="tmp-created:1").returncode == 137  # before the first checkpoint
    assert (out / "config.yaml").exists() and not (out / "checkpoint").exists()
    assert cli.main(["train-bc", "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no checkpoint yet" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_two_processes_cannot_train_into_one_run_folder(tmp_path, dataset):
    """A second run (or a second --resume) into a folder another process is training in is refused."""
    out = tmp_path / "run"
    holder = (
        "import sys; from pathlib import Path; from dpft.base_policies.infra.run_folder import RunFolder; "
        "RunFolder(Path(sys.argv[1])).lock(); print('locked', flush=True); sys.stdin.read()"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", holder, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout.readline().strip() == "locked"
        res = train_bc(dataset, out)
        assert res.returncode == 2 and "is in use by dpft process" in res.stderr, res.stderr
    finally:
        first.communicate("")
    assert train_bc(dataset, out).returncode == 0  # the lock went with the process


def test_readers_find_a_copy_moved_aside_without_changing_anything(tmp_path, dataset):
    """``dpft eval`` of a run whose policy a kill left moved aside reads that copy and leaves the
    folder alone (only the process that owns the run repairs it); another name's temporaries are
    never taken for this one's."""
    from dpft.base_policies import load_policy

    out = tmp_path / "run"
    assert train_bc(dataset, out).returncode == 0
    (out / "policy").rename(out / ".policy.old")
    (out / ".policy_v2.abcdefgh.tmp").mkdir()  # a sibling's temporary
    before = sorted(p.name for p in out.iterdir())
    assert load_policy(out).config.task == "toy_envs:Obstacle-v0"
    assert sorted(p.name for p in out.iterdir()) == before
    recover_dir(out / "policy")
    assert (out / "policy" / "config.json").exists() and (out / ".policy_v2.abcdefgh.tmp").exists()
