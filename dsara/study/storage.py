"""The study storage: an Optuna RDB storage through SQLAlchemy, the only coordinator of workers.

- URL: ``--storage``, else ``$DSARA_STORAGE``, else ``sqlite:///dsara.db`` (a file in the current
  folder: one machine). Many machines share a PostgreSQL database:
  ``postgresql+psycopg://user:password@host:5432/dsara``.
- SQLite waits up to `SQLITE_BUSY_TIMEOUT_S` for a lock instead of failing at once; PostgreSQL
  connections are checked before use (`pool_pre_ping`: a restarted server or a dropped idle
  connection costs a reconnect, not a failed trial) from a small bounded pool (a worker needs two:
  its own and its heartbeat thread's).
- Heartbeats: every worker records one per running trial every `heartbeat_s`; a trial whose last
  heartbeat is older than `grace_s` belongs to a dead worker. The next worker that claims a trial
  fails it and re-queues it (`requeue`, up to `max_retry` times). The heartbeat runs until the
  trial's result is stored, and the default grace period is longer than the retry period plus a
  heartbeat, so a worker that outlives an outage keeps its trial.
- Workers retry calls that lost their connection (a server restart) for ``--db-retry`` seconds;
  see `dsara.study.retry`.
- Passwords never appear in messages: `mask_url` renders URLs with ``***``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

from ..errors import DsaraError

DEFAULT_STORAGE = "sqlite:///dsara.db"
SQLITE_BUSY_TIMEOUT_S = 60  # a writer waits this long for SQLite's lock before giving up
PG_POOL_SIZE = 2  # connections kept per worker (main thread + heartbeat thread)
PG_MAX_OVERFLOW = 2  # extra connections allowed at a peak (the claim lock holds one)
CONNECT_TIMEOUT_S = 10  # an unreachable server fails in seconds, not minutes
HEARTBEAT_S = 60  # a running trial's heartbeat period
RETRY_S = 300  # a worker keeps retrying a database that went away for this long (--db-retry)
# a trial without a heartbeat for this long is stale: its worker died. Longer than an outage a
# worker outlives (RETRY_S) plus a heartbeat period, so a live worker's trial is never taken
GRACE_S = 420


def resolve_url(storage: str | None) -> str:
    return storage or os.environ.get("DSARA_STORAGE") or DEFAULT_STORAGE


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``, safe for messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: show the scheme only
        return url.split("://", 1)[0] + "://***" if "://" in url else "***"


def engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    kw = {"pool_pre_ping": True, "pool_size": PG_POOL_SIZE, "max_overflow": PG_MAX_OVERFLOW,
          "pool_recycle": 1800}
    if url.startswith("postgresql"):
        kw["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return kw


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URL; None for other URLs and in-memory SQLite."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(url[len("sqlite:///"):].split("?")[0])


def open_storage(storage: str | None = None, *, create: bool = False, heartbeat_s: int = HEARTBEAT_S,
                 grace_s: int = GRACE_S, max_retry: int | None = 2, retry_s: float = 0,
                 log=None):
    """An `optuna.storages.RDBStorage` with heartbeats, or a one-line DsaraError.

    Without `create`, a SQLite file must exist already: opening would silently create an empty
    database as a side effect of a typo. With `retry_s` > 0 (study workers), calls that lose the
    connection to a database server are retried for up to that many seconds (`retry`).
    """
    import optuna

    from .retry import RetryingRDBStorage, reason

    if not 1 <= heartbeat_s < grace_s:
        raise DsaraError(f"heartbeat every {heartbeat_s} s with a grace period of {grace_s} s: the "
                         "grace period must be longer than the heartbeat period (e.g. 3x), or "
                         "live trials are taken for dead ones and run twice")
    url = resolve_url(storage)
    path = sqlite_path(url)
    if path is not None and not create and not path.is_file():
        raise DsaraError(f"no study database at {mask_url(url)}; create a study first (dsara "
                         "study create) or pass --storage / set DSARA_STORAGE")
    if path is not None and create and not path.parent.is_dir():
        raise DsaraError(f"cannot create {mask_url(url)}: folder {path.parent} does not exist")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeats are "experimental" in Optuna 5
            st = RetryingRDBStorage(
                url, engine_kwargs=engine_kwargs(url), heartbeat_interval=heartbeat_s,
                grace_period=grace_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retry))
    except Exception as e:  # the driver's message, first line, password scrubbed
        raise DsaraError(f"cannot open storage {mask_url(url)}: {reason(e, url)}; check the "
                         "URL and the server, or pass --storage / set DSARA_STORAGE") from None
    st.retry_s = retry_s
    if log is not None:
        st.log = log
    return st


@contextlib.contextmanager
def claim_lock(storage, study_name: str) -> Iterator[bool]:
    """Serialize "count the trials, then ask for one" across every worker of a study; yields
    whether there is a lock.

    PostgreSQL: a session advisory lock (released by the server if the worker dies or the server
    restarts: a failed unlock is then harmless); MySQL: GET_LOCK; SQLite: an exclusive lock on a
    file beside the database (one machine). Other backends get no lock: the trial budget may then
    be overshot by up to (workers - 1).
    """
    from sqlalchemy import text

    dialect = storage.engine.dialect.name
    key = zlib.crc32(f"dsara-study:{study_name}".encode())
    if dialect == "postgresql":
        with storage.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield True
            finally:
                with _unless_connection_lost():
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
    elif dialect == "mysql":
        with storage.engine.connect() as conn:
            conn.execute(text("SELECT GET_LOCK(:k, -1)"), {"k": f"dsara-{key}"})
            try:
                yield True
            finally:
                with _unless_connection_lost():
                    conn.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": f"dsara-{key}"})
    elif (path := sqlite_path(str(storage.url))) is not None:
        with open(f"{path}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        yield False


@contextlib.contextmanager
def _unless_connection_lost() -> Iterator[None]:
    """A lost connection took its session lock with it: nothing left to release."""
    from .retry import is_connection_error

    try:
        yield
    except Exception as e:
        if not is_connection_error(e):
            raise


class Heartbeat:
    """Records a running trial's heartbeat now and every `interval` seconds, in a thread."""

    def __init__(self, storage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self.taken_over = threading.Event()  # another worker failed and re-queued this trial
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"heartbeat-{trial_id}")

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        from .retry import no_retry

        wait = self.interval
        with no_retry():  # this loop is the retry: it never blocks on an unreachable database
            while not self._stop.wait(wait):
                try:
                    if self.storage.get_trial(self.trial_id).state.is_finished():
                        self.taken_over.set()  # the search stops at its next epoch boundary
                        return
                    self.storage.record_heartbeat(self.trial_id)
                    wait = self.interval
                except Exception:  # the database is away: beat again soon, so that a restarted
                    wait = min(self.interval, 1.0)  # server hears from this trial within 1 s
