"""Workers survive a database restart: storage calls are retried with backoff for a bounded time.

A study worker's storage is a `RetryingRDBStorage`: every call that loses its connection (the
server restarts, fails over, or the network drops) is tried again after 0.5, 1, 2, ... up to
`BACKOFF_MAX_S` seconds, for at most ``retry_s`` seconds in all (``dsara study run --db-retry``);
then `DatabaseUnreachable` (one line) ends the worker and its running trial is re-queued by the next
worker, as for any dead worker. The running search does not touch the database between epochs, so it
keeps going meanwhile; only the worker's bookkeeping waits.

Only a lost or refused connection is retried (SQLSTATE class 08, a server shutting down, a socket
error); any other database error -- a deadlock, a statement timeout, a constraint -- is raised at
once as `DatabaseError`, one line saying what it is.

Nothing is lost or done twice (`writes`): reads, attribute writes and heartbeats are idempotent;
trial creation and state changes carry a client token committed with them, and a retry first looks
its token up, so a commit whose answer was lost counts as done -- and another worker's commit of
the same state never does. The claim (count the trials, then ask for one) runs under the database
lock and is retried as a whole, with one token for all its tries (`writing_as`).

SQLite (one machine, no server to restart) is not retried: its errors are not connection losses.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from ..errors import DsaraError
from . import writes

__all__ = ["DatabaseError", "DatabaseUnreachable", "RetryingRDBStorage", "best_effort",
           "connection_error", "no_retry", "writing_as"]
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 10.0  # waits between tries: doubling from first to max
NOT_RETRIED = ("sqlite",)  # dialects without a server to lose: their errors are not outages
SERVER_GONE = ("57P01", "57P02", "57P03")  # PostgreSQL shutting down / restarting: the server left
MYSQL_LOST = (2003, 2006, 2013, 2055)  # can't connect, server gone, lost during query, lost

_local = threading.local()  # .depth: calls in progress; .off: retries disabled; .token: see writing_as


class DatabaseUnreachable(DsaraError):
    """The database stayed unreachable for the whole retry period."""


class DatabaseError(DsaraError):
    """The database answered with an error that is not a lost connection: not retried."""


def _driver_lost(orig: BaseException | None) -> bool:
    """Whether a driver's exception is a lost or refused connection (else another error)."""
    if isinstance(orig, ConnectionError | TimeoutError):
        return True
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code:
        return code.startswith("08") or code in SERVER_GONE
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # MySQL drivers: (code, message)
        return args[0] in MYSQL_LOST
    return type(orig).__module__.split(".")[0] in ("psycopg", "psycopg2") and \
        type(orig).__name__ in ("OperationalError", "InterfaceError")  # no code: client side


def _classify(e: BaseException | None) -> tuple[str, BaseException] | None:
    """("lost" | "error", the database exception behind `e`), or None: not a database error.
    Optuna wraps driver errors (StorageInternalError from SQLAlchemy's from the driver's)."""
    import sqlalchemy.exc as sa
    from optuna.exceptions import OptunaError, StorageInternalError

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, LookupError | ValueError) or (
                isinstance(e, OptunaError) and not isinstance(e, StorageInternalError)):
            return None  # the storage's answer (no such trial, duplicated name, finished): no fault
        if isinstance(e, sa.DBAPIError):
            return ("lost" if e.connection_invalidated or _driver_lost(e.orig) else "error"), e
        if isinstance(e, ConnectionError | sa.DisconnectionError):
            return "lost", e
        if type(e).__module__.split(".")[0] in ("psycopg", "psycopg2", "pymysql", "MySQLdb"):
            return ("lost" if _driver_lost(e) else "error"), e
        e = e.__cause__ or e.__context__
    return None


def connection_error(e: BaseException | None) -> BaseException | None:
    """The lost or refused connection behind `e`, or None if `e` is something else."""
    found = _classify(e)
    return found[1] if found and found[0] == "lost" else None


def is_connection_error(e: BaseException | None) -> bool:
    return connection_error(e) is not None


def reason(e: BaseException, url: str) -> str:
    """`e` in one line: its type and the first line of the driver's message, password scrubbed."""
    from sqlalchemy.engine import make_url

    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    line = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    try:
        secret = make_url(url).password
    except Exception:
        secret = None
    return line.replace(secret, "***") if secret else line


@contextlib.contextmanager
def no_retry() -> Iterator[None]:
    """Calls in this block fail at once (the caller retries a larger unit, or beats again)."""
    old = getattr(_local, "off", False)
    _local.off = True
    try:
        yield
    finally:
        _local.off = old


@contextlib.contextmanager
def writing_as(token: str) -> Iterator[None]:
    """Trial writes of this thread in the block carry `token` (a claim: one token for all its
    tries, so that a retried claim finds the trial its lost try took)."""
    old = getattr(_local, "token", None)
    _local.token = token
    try:
        yield
    finally:
        _local.token = old


def best_effort(callback: Callable[[dict], None], log: Callable[[str], None]
                ) -> Callable[[dict], None]:
    """A per-epoch search callback that waits for no database: during an outage its work for the
    epoch is skipped (the next epoch's replaces it) and the search goes on."""
    def call(record: dict) -> None:
        try:
            with no_retry():
                callback(record)
        except Exception as e:
            if (lost := connection_error(e)) is None:
                raise
            log(f"epoch {record['epoch']}: not stored on the trial, the database is unreachable "
                f"({type(lost).__name__}); the next epoch stores its files again")
    return call


def backoff(attempt: int) -> float:
    return min(BACKOFF_FIRST_S * 2 ** attempt, BACKOFF_MAX_S)  # module globals: tests shorten them


def _silent(line: str) -> None:
    pass


class RetryingRDBStorage(RDBStorage):
    """An Optuna RDBStorage whose calls outlive a database restart and whose trial writes are
    exactly-once (see the module docstring). Pickles like RDBStorage; the copy logs nothing."""

    retry_s: float = 0.0  # 0: no retries (interactive commands fail at once)
    log: Callable[[str], None] = staticmethod(_silent)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        writes.create_table(self.engine)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("log", None)  # e.g. a closure of the caller's: not for another process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        writes.create_table(self.engine)

    def describe(self, e: BaseException) -> str:
        return reason(e, self.url)

    def retry(self, call: Callable[[], Any], what: str) -> Any:
        """`call()`, tried again on lost connections for up to `retry_s` seconds."""
        if self.retry_s <= 0 or getattr(_local, "off", False) or \
                self.engine.dialect.name in NOT_RETRIED:
            return call()
        start, attempt = time.monotonic(), 0
        while True:
            try:
                result = call()
            except Exception as e:
                self._unless_lost(e, what)
                waited = time.monotonic() - start
                if waited >= self.retry_s:
                    raise DatabaseUnreachable(
                        f"the study database was unreachable for {waited:.0f} s ({what}: "
                        f"{self.describe(connection_error(e))}); start the worker again once it "
                        "answers (its running trial is re-queued), or allow longer with "
                        "--db-retry") from None
                if attempt == 0:
                    self.log(f"database unreachable during {what} "
                             f"({self.describe(connection_error(e))}); retrying for up to "
                             f"{self.retry_s:g} s")
                time.sleep(min(backoff(attempt), max(self.retry_s - waited, 0.05)))
                attempt += 1
                continue
            if attempt:
                self.log(f"database reachable again after {time.monotonic() - start:.1f} s "
                         f"({what})")
            return result

    def _unless_lost(self, e: Exception, what: str) -> None:
        """Return if `e` is a lost connection; raise anything else, a database error as one
        line."""
        found = _classify(e)
        if found is None:
            raise e
        if found[0] == "error":
            raise DatabaseError(
                f"the study database failed {what} with an error that is not a lost connection, "
                f"so it is not retried ({self.describe(found[1])}); fix its cause and start the "
                "worker again (its running trial is re-queued)") from e

    def _outer(self, call: Callable[[], Any], what: str) -> Any:
        """Retry only the outermost storage call of a thread (methods call one another)."""
        depth = getattr(_local, "depth", 0)
        if depth:
            return call()
        _local.depth = 1
        try:
            return self.retry(call, what)
        finally:
            _local.depth = 0

    def _once(self, write: Callable[[bool], Any], what: str) -> Any:
        """`write(retried)` through `_outer`; `retried` is False on the first try only."""
        tries = []

        def call():
            tries.append(1)
            return write(len(tries) > 1)
        return self._outer(call, what)

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None
                          ) -> FrozenTrial:
        token = getattr(_local, "token", None) or writes.new_token()

        def write(retried: bool) -> FrozenTrial:
            if retried and (mine := writes.trial_with_token(self, study_id, token)) is not None:
                return RDBStorage.get_trial(self, mine)  # the lost answer's trial
            return writes.create_trial(self, study_id, template_trial, token)
        return self._once(write, "create_new_trial")

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        return self._set_state(trial_id, state, values, requeue=False)

    def fail_for_retry(self, trial_id: int) -> bool:
        """FAIL a trial whose retry is to be queued (`requeue.sweep`), both in one transaction;
        False if another worker finished it first."""
        try:
            return self._set_state(trial_id, TrialState.FAIL, None, requeue=True)
        except UpdateFinishedTrialError:
            return False

    def _set_state(self, trial_id: int, state: TrialState, values, requeue: bool) -> bool:
        token = getattr(_local, "token", None) or writes.new_token()

        def write(retried: bool) -> bool:
            if retried and writes.token_of(self, trial_id) == token:
                return True  # our commit; only its answer was lost
            return writes.set_state(self, trial_id, state, values, token, requeue)
        return self._once(write, "set_trial_state_values")


# Methods that open their own session (each one a transaction): retried as a unit.
RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies",
    "set_trial_param", "_set_trial_param", "get_trial_param", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "get_all_trials", "_get_trials", "get_best_trial", "_get_best_trial_id",
    "record_heartbeat", "_get_stale_trial_ids",
)


def _retried(name: str):
    def wrapper(self, *args, **kwargs):  # RDBStorage's method, looked up at each call
        return self._outer(lambda: getattr(RDBStorage, name)(self, *args, **kwargs), name)
    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = getattr(RDBStorage, name).__doc__
    return wrapper


for _name in RETRIED:
    setattr(RetryingRDBStorage, _name, _retried(_name))
