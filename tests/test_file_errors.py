"""The file-system class of errors: each ``errno`` becomes one line naming the file and what to do.

Running as root (CI), permissions cannot be made to fail and a disk cannot be filled without a
mount, so the mapping is tested on the errors themselves and a full disk is injected into a real
checkpoint write; the bad-input battery and the fuzz test cover what can be produced on disk."""

from __future__ import annotations

import errno
import os

import pytest
from refusal import one_error_line, snapshot
from safetensors import SafetensorError
from synthetic import bimodal_episodes

from dpft.base_policies.data import write_robomimic_hdf5
from dpft.base_policies.infra.files import FileError, file_error, read_json
from dpft.finetune.commands import cli


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.EACCES, "permission denied"),
        (errno.ENOSPC, "no space left"),
        (errno.EDQUOT, "quota"),
        (errno.EROFS, "read-only"),
        (errno.ELOOP, "link loop"),
        (errno.EISDIR, "is a folder"),
        (errno.EMFILE, "too many open files"),
    ],
)
def test_each_errno_names_the_file_and_what_to_do(code, says):
    e = OSError(code, os.strerror(code), "/runs/x/config.yaml")
    message = str(file_error(e))
    assert "/runs/x/config.yaml" in message and says in message


def test_safetensors_reports_a_full_disk_as_text_and_it_reads_as_one():
    e = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })')
    assert "no space left" in str(file_error(e, "/runs/x/checkpoint", "checkpoint"))


def test_json_of_another_shape_names_the_file(tmp_path):
    (tmp_path / "s.json").write_text("[1, 2]")
    with pytest.raises(FileError, match="holds a JSON list, expected a dict"):
        read_json(tmp_path / "s.json", "record")
    (tmp_path / "s.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(FileError, match="not UTF-8"):
        read_json(tmp_path / "s.json", "record")


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    data = tmp_path / "demos.hdf5"
    write_robomimic_hdf5(data, bimodal_episodes(20), {"task": "toy_envs:Obstacle-v0"})
    argv = ["train-bc", "--dataset", str(data), "--out", str(tmp_path / "run"), "--arch.hidden-dim", "8"]
    argv += ["--no-progress", "--checkpoint-every", "2"]
    assert cli.main([*argv, "--steps", "2"]) == 0
    before = snapshot(tmp_path / "run" / "checkpoint")

    import dpft.base_policies.train_bc as train_bc

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "x" })')

    monkeypatch.setattr(train_bc, "save_file", full)
    assert cli.main(["train-bc", "--out", str(tmp_path / "run"), "--resume", "--steps", "4", "--no-progress"]) == 2
    assert "no space left on the device" in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path / "run" / "checkpoint") == before  # the last complete checkpoint is intact
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
