"""Progress bars (tqdm) on a terminal, plain lines otherwise.

Bars go to stderr and only when it is a terminal (tqdm's ``disable=None``), so logs, pipes, CI and
pytest see exactly the lines they saw before. Lines are written with `write`, which keeps a live bar
intact. Where no bar is drawn because stderr is not a terminal (a log file, a pipe, a batch job),
`Pace` writes a plain line there instead every ~30 s or ~10% of the work, with rate and ETA, so a log
never stays silent for minutes. A study worker shows one bar of the study's trials and switches the bars of the searches,
retrains and evaluations it runs off (`only_outer`), so a terminal shows one bar, not a stack.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator

from tqdm.auto import tqdm

_inner = {"enabled": True}
# plain progress lines (`Pace`) where no bar is drawn: a line at least every EVERY_S seconds, and
# one per tenth of the work but no closer than MIN_GAP_S seconds; --no-progress turns them off
EVERY_S, MIN_GAP_S = 30.0, 3.0
_lines = {"enabled": True}


@contextlib.contextmanager
def lines_off(off: bool = True) -> Iterator[None]:
    """While inside (if `off`), no plain progress lines (``--no-progress``)."""
    before = _lines["enabled"]
    _lines["enabled"] = before and not off
    try:
        yield
    finally:
        _lines["enabled"] = before


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


def duration(seconds: float) -> str:
    """A wall time a person reads at a glance: 45 s, 12 min, 5.3 h, 2.1 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 24 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("ch", "s", "x")) else "s")


def rate_text(per_s: float, unit: str) -> str:
    return f"{per_s:.2f} {plural(unit)}/s" if per_s >= 1 else f"{1 / per_s:.2f} s per {unit}"


class Pace:
    """Plain progress lines on stderr where no bar is drawn: one every EVERY_S seconds, or when
    another `every_frac` of the work is done (but not within MIN_GAP_S of the previous line), each
    with the rate and the ETA. `enabled=None`: when stderr is not a terminal (unless --no-progress
    switched the lines off); `clock` is injectable for tests."""

    def __init__(self, what: str, total: int, unit: str = "step", enabled: bool | None = None,
                 every_frac: float = 0.1, clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.unit, self.done = what, max(int(total), 1), unit, 0
        self.every_s, self.every_frac, self.min_gap_s = EVERY_S, every_frac, MIN_GAP_S
        self.clock = clock
        if enabled is None:  # inner runs of a study or experiment print lines too: no bar stacks
            enabled = not _isatty(sys.stderr) and _lines["enabled"]
        self.enabled = enabled
        self.start = self.last_t = clock()
        self.last_done = 0
        self.first_t: float | None = None  # when the first unit ended (warm-up excluded)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.first_t is None:
            self.first_t = self.clock()
        if not self.enabled:
            return
        now = self.clock()
        since = now - self.last_t
        step_due = (self.done - self.last_done) >= self.every_frac * self.total
        if since >= self.every_s or (step_due and since >= self.min_gap_s) or (
                self.done >= self.total and self.last_done < self.total and since >= self.min_gap_s):
            print(self.line(now), file=sys.stderr, flush=True)
            self.last_t, self.last_done = now, self.done

    def seconds_per_unit(self) -> float:
        """Measured after the first unit (compilation, caches and allocation warm up there)."""
        now = self.clock()
        if self.done > 1 and self.first_t is not None and now > self.first_t:
            return (now - self.first_t) / (self.done - 1)
        return (now - self.start) / max(self.done, 1)

    def line(self, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.start
        per_s = self.done / elapsed if elapsed > 0 else 0.0
        eta = duration((self.total - self.done) / per_s) if per_s > 0 else "unknown"
        rate = rate_text(per_s, self.unit) if per_s > 0 else "no rate yet"
        return (f"{self.what}: {self.done}/{self.total} {plural(self.unit)} "
                f"({100 * self.done / self.total:.0f}%), {rate}, {duration(elapsed)} elapsed, "
                f"ETA {eta}")


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
