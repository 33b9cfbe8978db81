"""Progress bars (tqdm) on a terminal, plain lines otherwise.

Bars go to stderr and only when it is a terminal (tqdm's ``disable=None``), so logs, pipes, CI and
pytest see exactly the lines they saw before. Lines are written with `write`, which keeps a live bar
intact. A study worker shows one bar of the study's trials and switches the bars of the searches,
retrains and evaluations it runs off (`only_outer`), so a terminal shows one bar, not a stack.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm

_inner = {"enabled": True}


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
        unit: str = "it", enabled: bool | None = None, leave: bool = False, initial: int = 0):
    """A tqdm bar: on a terminal when `enabled` is None, forced on or off otherwise."""
    disable = None if enabled is None else not enabled
    if not _inner["enabled"]:
        disable = True
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave,
                initial=initial, file=sys.stderr, dynamic_ncols=True)


def write(line: str) -> None:
    """Print a line to stdout without breaking a bar that is being drawn."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


@contextlib.contextmanager
def only_outer() -> Iterator[None]:
    """While inside, `bar` returns disabled bars (the caller draws its own)."""
    before = _inner["enabled"]
    _inner["enabled"] = False
    try:
        yield
    finally:
        _inner["enabled"] = before
