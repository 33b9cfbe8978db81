"""One owner per run directory: an exclusive OS file lock, held while a process works in it.

`dsara search` (new and ``--resume``), `dsara train` (new and resumed) and every study trial take
``RUN_DIR/.dsara.lock`` with ``flock(LOCK_EX | LOCK_NB)`` before they write anything. The kernel
drops the lock when the owner exits in any way, SIGKILL included, so a dead owner on this machine
never blocks anyone. A second process gets one line naming the owner (pid, host, since when, from
the lock file's record) and touches no file.

A lock left by a dead process on another host of a shared filesystem: NFSv4 servers drop the locks
of a client whose lease expired (about 90 s after its host died); NFSv3 (NLM) keeps them until that
host reboots, and some filesystems keep them for good. `break_lock` (``--break-lock`` on
`dsara search`, `dsara train` and `dsara study run`) ends that wait: it refuses when the owner is a
live process on this host, and otherwise -- the owner's host is not this one, so the caller says
it is dead -- puts a fresh, locked lock file in place of the old one (a new inode: the dead
owner's lock stays on the old one, which nobody opens any more). Every taker checks, once it has the
lock, that the path still names the file it locked, so a lock broken under it is taken again.

Filesystems without locks (``ENOLCK``, ``EOPNOTSUPP``) are refused with a message; ``DSARA_LOCK=off``
runs without the check, and then one process per run directory is the user's business.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from ..errors import DsaraError
from .files import ensure_dir

LOCK_NAME = ".dsara.lock"
BREAK_LOCK_HELP = ("the run directory's lock is held by a dead process on another host (a shared "
                   "filesystem): take it over; refused if the holder is a live process on this "
                   "host")
_PASSWORD = re.compile(r"(://[^/:@\s]*:)\S*@")  # user:PASSWORD@ in a URL
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)

_held: dict[str, list[int]] = {}  # real path of a run dir -> [fd, depth]: re-entrant per process
_guard = threading.Lock()


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK_NAME


@contextlib.contextmanager
def run_lock(run_dir: str | Path, break_stale: bool = False) -> Iterator[Path]:
    """Own `run_dir` (created if missing) for the block; a DsaraError if another process owns it.

    Re-entrant within a process: a study trial holds its run directory and the search it runs
    takes the same lock again."""
    if os.environ.get("DSARA_LOCK", "").lower() == "off":
        yield Path(run_dir)
        return
    ensure_dir(run_dir, "run directory")
    key = os.path.realpath(run_dir)
    with _guard:
        if key in _held:
            _held[key][1] += 1
        else:
            if break_stale:
                break_lock(run_dir)
            _held[key] = [_acquire(lock_path(run_dir)), 1]
    try:
        yield Path(run_dir)
    finally:
        with _guard:
            _held[key][1] -= 1
            if _held[key][1] == 0:
                _release(_held.pop(key)[0])


def _acquire(path: Path) -> int:
    while True:
        fd = _open(path)
        try:
            _flock(fd, path)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DsaraError(f"{path.parent} is in use by {describe(holder)}; wait for it to "
                             "finish or stop it (if its host is dead, run again with "
                             "--break-lock)") from None
        if _same_file(fd, path):
            _write_holder(fd)
            return fd
        os.close(fd)  # the lock was broken and replaced between open and flock: take the new one


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # an existing file is not modified
    except OSError as e:
        raise DsaraError(f"cannot open the lock file {path}: {e.strerror}; check the folder's "
                         "permissions") from None


def _flock(fd: int, path: Path) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as e:
        os.close(fd)
        if e.errno in NO_LOCKS:
            raise DsaraError(f"cannot lock {path}: this filesystem has no file locks "
                             f"({e.strerror}); use a filesystem with locks, or set DSARA_LOCK=off "
                             "and make sure yourself that one process uses the run directory") \
                from None
        raise DsaraError(f"cannot lock {path}: {e.strerror}") from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)  # an empty record: nobody owns it now
    os.close(fd)  # closing the last descriptor releases the flock


def holder_record() -> dict:
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": _PASSWORD.sub(r"\1***@", command)[:200]}  # --storage URLs may hold one


def _write_holder(fd: int) -> None:
    data = (json.dumps(holder_record()) + "\n").encode()
    with contextlib.suppress(OSError):  # the record is informative; the flock is the lock
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def read_holder(run_dir: str | Path) -> dict:
    """The owner record of `run_dir`'s lock file ({} if none or unreadable)."""
    try:
        fd = os.open(lock_path(run_dir), os.O_RDONLY)
    except OSError:
        return {}
    try:
        return _read_holder(fd)
    finally:
        os.close(fd)


def describe(holder: dict) -> str:
    if not holder:
        return "another process (it has not written its pid and host yet)"
    return (f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # exists but not ours, or no pid recorded: assume alive
    return True


def break_lock(run_dir: str | Path) -> bool:
    """Replace a lock held by a dead owner; True if one was broken. Refused (DsaraError) when the
    owner is a live process on this host; a free lock is left alone."""
    path = lock_path(run_dir)
    if not path.exists():
        return False
    import fcntl

    probe = _open(path)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False  # nobody holds it: nothing to break (closing releases the probe)
    except BlockingIOError:
        holder = _read_holder(probe)
    finally:
        os.close(probe)
    if not holder.get("host"):
        raise DsaraError(f"{path.parent} is in use by {describe(holder)}; try again in a moment")
    if holder.get("host") == socket.gethostname() and _alive(holder.get("pid")):
        raise DsaraError(f"{path.parent} is in use by {describe(holder)}, a live process on this "
                         "host: --break-lock only takes over the locks of dead processes; stop "
                         "it first")
    _replace(path)
    print(f"dsara: broke the lock of {path.parent} held by {describe(holder)}", file=sys.stderr)
    return True


def _replace(path: Path) -> None:
    """A new lock file (a new inode) renamed over the old one; takers re-check the inode."""
    tmp = path.with_name(f"{LOCK_NAME}.{os.getpid()}.new")
    os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644))
    os.replace(tmp, path)
