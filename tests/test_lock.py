"""One owner per run directory: a second `dsara search` / `search --resume` / `train` is refused in
one line naming the owner and touches no file; a SIGKILLed owner frees the directory at once; a lock
left by a dead process on another host is broken with --break-lock, never one of a live local one."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dsara import DsaraError
from dsara.cli import main
from dsara.search import SearchConfig
from dsara.search.rundir import RunDir
from dsara.utils.lock import LOCK_NAME, break_lock, lock_path, read_holder, run_lock

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ["--space", "tiny", "--dataset", "synthetic", "--set", "synthetic.n_train=32",
          "--set", "synthetic.image_size=8", "--epochs", "2", "--stage1-epochs", "1",
          "--batch-size", "8", "--pgd-steps", "1", "--max-steps", "1", "--device", "cpu",
          "--no-progress"]
TRAIN = ["resnet_tiny", "--dataset", "synthetic", "--synthetic-train", "64", "--synthetic-test",
         "16", "--synthetic-size", "8", "--epochs", "1", "--steps", "1", "--batch-size", "16",
         "--val-size", "16", "--device", "cpu"]
# holds the lock until its stdin closes; prints its record once it owns the directory. dsara.utils.lock
# is imported without the package's __init__ (torch): the holder starts in a fraction of a second
HOLDER = ("import sys, json, types\n"
          f"sys.modules['dsara'] = types.ModuleType('dsara'); sys.modules['dsara'].__path__ = "
          f"[{str(ROOT / 'dsara')!r}]\n"
          "from dsara.utils.lock import run_lock, read_holder\n"
          "with run_lock(sys.argv[1]):\n"
          "    print(json.dumps(read_holder(sys.argv[1])), flush=True)\n"
          "    sys.stdin.read()\n")


@pytest.fixture
def holder():
    """Start a process owning a run directory; yields a function (dir -> Popen), kills them all."""
    procs = []

    def start(run_dir: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()  # blocks until it holds the lock: an event, not a sleep
        assert line, f"the lock holder exited with {proc.wait()}"
        proc.record = json.loads(line)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def snapshot(folder: Path) -> dict[str, tuple]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rewrite(run_dir: Path, record: dict) -> None:
    with open(lock_path(run_dir), "r+") as fh:  # the holder's inode, still locked by it
        fh.write(json.dumps(record))
        fh.truncate()


def refused(capsys, argv: list[str], pid: int) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"pid {pid} on host {socket.gethostname()} since " in err and "in use by" in err
    return err


def test_second_owner_is_refused_naming_the_holder_and_touches_nothing(tmp_path, capsys, holder):
    run_dir = tmp_path / "search"  # a search that stopped after epoch 1 (no need to run one)
    rd = RunDir(run_dir)
    rd.write_config(SearchConfig(space="tiny", dataset="synthetic", out=str(run_dir)).to_dict())
    rd.checkpoint.write_bytes(b"epoch 1 weights")
    rd.metrics.write_text('{"epoch": 1}\n')
    owner = holder(run_dir)
    before = snapshot(run_dir)
    assert owner.record["pid"] == owner.pid and owner.record["host"] == socket.gethostname()
    refused(capsys, ["search", "--resume", str(run_dir), "--no-progress"], owner.pid)
    refused(capsys, ["train", *TRAIN, "--out", str(run_dir)], owner.pid)
    assert snapshot(run_dir) == before  # not a byte, not an mtime changed

    fresh = tmp_path / "fresh"  # a new search and a new training run, started twice
    owner2 = holder(fresh)
    refused(capsys, ["search", *SEARCH, "--out", str(fresh)], owner2.pid)
    refused(capsys, ["train", *TRAIN, "--out", str(fresh)], owner2.pid)
    assert sorted(p.name for p in fresh.iterdir()) == [LOCK_NAME]


def test_a_sigkilled_owner_frees_the_directory_at_once(tmp_path, holder):
    run_dir = tmp_path / "run"
    owner = holder(run_dir)
    with pytest.raises(DsaraError, match=f"pid {owner.pid}"):
        with run_lock(run_dir):
            pass
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()  # the kernel dropped the lock with the process
    with run_lock(run_dir):
        assert read_holder(run_dir)["pid"] == os.getpid()
    assert read_holder(run_dir) == {}  # released: no owner recorded


def test_the_lock_is_reentrant_in_a_process_and_free_after_it(tmp_path, holder):
    run_dir = tmp_path / "run"
    with run_lock(run_dir):
        with run_lock(run_dir):  # a study trial holds it, and its search takes it again
            assert read_holder(run_dir)["pid"] == os.getpid()
        assert read_holder(run_dir)["pid"] == os.getpid()  # still ours after the inner block
    owner = holder(run_dir)  # released: another process gets it
    assert owner.record["pid"] == owner.pid


def test_break_lock_takes_over_a_dead_hosts_lock_but_never_a_live_local_one(tmp_path, holder,
                                                                           capsys):
    run_dir = tmp_path / "run"
    live = holder(run_dir)
    with pytest.raises(DsaraError, match="a live process on this host"):
        break_lock(run_dir)
    # What a dead host leaves on a shared filesystem: a lock the server still grants to it. The
    # live holder stands in for it; its record is rewritten to name another host.
    stale = {**live.record, "host": "node-that-died"}
    rewrite(run_dir, stale)
    assert break_lock(run_dir) is True
    assert "broke the lock" in capsys.readouterr().err
    with run_lock(run_dir):  # the old inode stays locked by the "dead" holder; the path is ours
        assert read_holder(run_dir)["pid"] == os.getpid()
    assert break_lock(run_dir) is False  # a free lock is left alone

    assert main(["train", *TRAIN, "--out", str(tmp_path / "t"), "--max-epochs", "0"]) == 0
    other = holder(tmp_path / "t")
    rewrite(tmp_path / "t", {**other.record, "host": "node-that-died"})
    capsys.readouterr()
    assert main(["train", *TRAIN, "--out", str(tmp_path / "t"), "--max-epochs", "0",
                 "--break-lock"]) == 0  # the command line's way to the same
