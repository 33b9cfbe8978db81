"""SIGTERM handled like Ctrl-C, the one signal helper of the package."""

from __future__ import annotations

import contextlib
import signal


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside the block, SIGTERM (a scheduler's preemption, `kill`) raises KeyboardInterrupt as
    Ctrl-C does, so the code that stops cleanly on Ctrl-C (a search keeps its last checkpoint, a
    worker re-queues its trial) stops cleanly on SIGTERM too; the old handler is restored after.
    Outside the main thread (a study worker thread) signals cannot be set: nothing changes."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
