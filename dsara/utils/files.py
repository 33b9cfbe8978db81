"""Files at the boundary with the operating system: atomic writes, and OS errors as one line.

Writes go to a temporary file in the same folder, are flushed and fsynced, and the file is then
renamed over the target (`os.replace` is atomic on POSIX and Windows): a crash, a kill or a full
disk never leaves a half-written checkpoint, log or export, and the previous version stays.

Every failure of the operating system (a full disk, a missing folder, a file where a folder should
be, no permission, a binary file where text was expected) becomes a `DsaraError` naming the path.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import DsaraError


def os_error(e: BaseException) -> OSError | None:
    """The OSError behind `e`, if any: torch.save turns a failed write into a RuntimeError whose
    context is the OSError (ENOSPC, EIO...)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Call `write(file)` on a temporary file, then move it to `path` in one step.

    An OSError (e.g. the disk is full) becomes a DsaraError saying that `path` was left as it was.
    """
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise DsaraError(f"cannot write {path}: {reason(e)}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename makes it the real file
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; these files are ordinary data
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if (err := os_error(e)) is None:
            raise
        kept = "the previous version is intact" if path.exists() else "nothing was written"
        raise DsaraError(f"cannot write {path}: {reason(err)}; {kept}; free space or fix the "
                         "folder, then run again") from None
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def append_line(path: str | Path, text: str) -> None:
    """Append one line and fsync it (logs read back line by line; a cut last line is dropped)."""
    path = Path(path)
    ensure_dir(path.parent)
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        raise DsaraError(f"cannot append to {path}: {reason(e)}; free space or fix the folder, "
                         "then resume") from None


def ensure_dir(path: str | Path, what: str = "folder") -> Path:
    """`path` as an existing folder (created with its parents), or a one-line DsaraError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DsaraError(f"cannot use {path} as the {what}: it, or a folder above it, is a file; "
                         "choose another path") from None
    except OSError as e:
        raise DsaraError(f"cannot create the {what} {path}: {reason(e)}; choose a path you can "
                         "write to") from None
    return path


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of a user's file, or a one-line DsaraError naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DsaraError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise DsaraError(f"{what} {path} is a folder, not a file") from None
    except OSError as e:
        raise DsaraError(f"cannot read {what} {path}: {reason(e)}") from None
    except UnicodeDecodeError as e:
        raise DsaraError(f"{what} {path} is not UTF-8 text (byte {e.start}); pass the right "
                         "file") from None
