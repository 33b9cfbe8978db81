"""Operating-system errors at the command line are one line naming the path (exit 2), and a disk
that fills up while a checkpoint is written leaves the previous checkpoint intact and says so."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest
import torch

from dsara import cli
from dsara.cli import main
from dsara.search.rundir import RunDir

SEARCH = ["--space", "tiny", "--dataset", "synthetic", "--set", "synthetic.n_train=32",
          "--set", "synthetic.image_size=8", "--epochs", "2", "--stage1-epochs", "1",
          "--batch-size", "8", "--pgd-steps", "1", "--max-steps", "1", "--device", "cpu",
          "--no-progress"]
TRAIN = ["--dataset", "synthetic", "--synthetic-train", "64", "--synthetic-test", "16",
         "--synthetic-size", "8", "--epochs", "1", "--steps", "1", "--batch-size", "16",
         "--val-size", "16", "--device", "cpu"]


def one_line(capsys, argv, *needles) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("dsara: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert str(needle) in err, err
    return err


@pytest.fixture
def files(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    binary = bytes(range(256)) * 4  # not UTF-8
    for name in ("binary.json", "binary.toml", "binary"):
        (tmp_path / name).write_bytes(binary)
    return tmp_path


def test_out_paths_that_cannot_be_folders_are_one_line(capsys, files):
    afile, below = files / "afile", files / "afile" / "run"
    one_line(capsys, ["search", *SEARCH, "--out", afile], afile, "is a file")
    one_line(capsys, ["search", *SEARCH, "--out", below], below, "is a file")
    one_line(capsys, ["train", "resnet_tiny", *TRAIN, "--out", afile], afile, "is a file")
    if Path("/proc/self").is_dir():  # a folder nobody can create
        one_line(capsys, ["search", *SEARCH, "--out", "/proc/nope/run"], "/proc/nope/run")
        one_line(capsys, ["train", "resnet_tiny", *TRAIN, "--out", "/proc/nope/run"],
                 "/proc/nope/run")
    assert afile.read_text() == "not a folder"


def test_binary_files_given_as_text_are_one_line(capsys, files):
    for name, argv in [
        ("binary.json", ["train", files / "binary.json", *TRAIN, "--out", files / "r"]),
        ("binary", ["train", files / "binary", *TRAIN, "--out", files / "r"]),
        ("binary.json", ["arch", "info", files / "binary.json"]),
        ("binary.toml", ["search", "--config", files / "binary.toml", *SEARCH]),
        ("binary.toml", ["train", "resnet_tiny", "--config", files / "binary.toml", *TRAIN,
                         "--out", files / "r"]),
        ("binary.toml", ["study", "create", "s", "--from", files / "binary.toml", "--storage",
                         f"sqlite:///{files}/s.db"]),
    ]:
        one_line(capsys, argv, files / name, "not UTF-8")
    one_line(capsys, ["arch", "info", files], files, "is a folder")  # a folder for a file


def test_outputs_under_a_file_are_one_line(capsys, files, tmp_path):
    db = f"sqlite:///{tmp_path}/s.db"
    assert main(["study", "create", "s", "--from", "smoke", "--storage", db, "--artifact-root",
                 str(tmp_path / "art")]) == 0
    capsys.readouterr()
    out = files / "afile" / "report.md"
    one_line(capsys, ["study", "report", "s", "--storage", db, "--out", out], files / "afile")
    one_line(capsys, ["report", "s", "--storage", db, "--out", out], files / "afile")
    one_line(capsys, ["plot", "arch", "ARNAS", "--out", files / "afile"], files / "afile")


def test_the_command_line_backstop_names_the_path(capsys, monkeypatch):
    def broken(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/data/x.bin")

    def undecodable(args):
        b"\xff".decode("utf-8")

    monkeypatch.setattr("dsara.commands.arch.cmd_list", broken)
    one_line(capsys, ["arch", "list"], "/srv/data/x.bin", "Permission denied")
    monkeypatch.setattr("dsara.commands.arch.cmd_list", undecodable)
    one_line(capsys, ["arch", "list"], "not UTF-8 text")
    assert "check the path" in cli.os_message(FileNotFoundError(2, "No such file", "f"))


class FillsUp(io.RawIOBase):
    """A file object that takes `room` bytes and then fails like a full disk."""

    def __init__(self, fh, room: int):
        self.fh, self.room = fh, room

    def writable(self):
        return True

    def write(self, b):
        if self.room < len(b):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.fh.write(b)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, capsys,
                                                                       monkeypatch):
    out = tmp_path / "run"
    real_save, saves = torch.save, []

    def save(obj, f, *a, **kw):  # the second checkpoint (epoch 2) hits a full disk half-way
        saves.append(obj.get("epoch"))
        if len(saves) == 2:
            return real_save(obj, FillsUp(f, room=4096), *a, **kw)
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    err = one_line(capsys, ["search", *SEARCH, "--out", out], out / "checkpoint.pt",
                   "No space left on device", "the previous version is intact")
    assert saves == [1, 2], err
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1  # epoch 1's checkpoint, whole
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # no half-written leftovers
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the search resumes
    assert main(["search", "--resume", str(out), "--no-progress"]) == 0
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == [1, 2]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
