"""Workers survive a database restart: storage calls are retried with backoff for a bounded time.

A study worker's storage is a `RetryingRDBStorage`: every call that loses its connection (the
server restarts, fails over, or the network drops) is tried again after 0.5, 1, 2, ... up to
`BACKOFF_MAX_S` seconds, for at most ``retry_s`` seconds in all (``dsara study run --db-retry``);
then `DatabaseUnreachable` (one line) ends the worker and its running trial is re-queued by the next
worker, as for any dead worker. The running search does not touch the database between epochs, so it
keeps going meanwhile; only the worker's bookkeeping waits.

Nothing is lost or counted twice:

- a call whose commit reached the server but whose answer did not is retried; reads and attribute
  writes are idempotent, and finishing a trial that the lost answer had already finished with the
  same state is taken as done (not as "already finished");
- the claim (count the trials, then ask for one) runs under the database lock and is retried as a
  whole, never call by call, since a restart drops that lock; a trial it created but could not give
  a heartbeat before the connection went is re-queued by the next claim (`orphans`).

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

from ..errors import DsaraError
from .storage import RETRY_S

__all__ = ["RETRY_S", "DatabaseUnreachable", "RetryingRDBStorage", "best_effort", "no_retry",
           "orphans"]
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 10.0  # waits between tries: doubling from first to max
NOT_RETRIED = ("sqlite",)  # dialects without a server to lose: their errors are not outages

_local = threading.local()  # .depth: calls in progress in this thread; .off: retries disabled


class DatabaseUnreachable(DsaraError):
    """The database stayed unreachable for the whole retry period."""


def connection_error(e: BaseException | None) -> BaseException | None:
    """The lost or refused connection behind `e` (Optuna wraps driver errors), or None if `e` is
    something else, e.g. a bad statement."""
    import sqlalchemy.exc as sa

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (sa.OperationalError, sa.InterfaceError, ConnectionError)):
            return e
        if isinstance(e, sa.DBAPIError) and e.connection_invalidated:
            return e
        if type(e).__module__.startswith("psycopg") and type(e).__name__ in (
                "OperationalError", "InterfaceError"):
            return e
        e = e.__cause__ or e.__context__
    return None


def is_connection_error(e: BaseException | None) -> bool:
    return connection_error(e) is not None


@contextlib.contextmanager
def no_retry() -> Iterator[None]:
    """Calls in this block fail at once (the caller retries a larger unit, or beats again)."""
    old = getattr(_local, "off", False)
    _local.off = True
    try:
        yield
    finally:
        _local.off = old


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


class RetryingRDBStorage(RDBStorage):
    """An Optuna RDBStorage whose calls outlive a database restart (see the module docstring)."""

    retry_s: float = 0.0  # 0: no retries (interactive commands fail at once)
    log: Callable[[str], None] = staticmethod(lambda line: None)
    describe: Callable[[BaseException], str] = staticmethod(lambda e: type(e).__name__)

    def retry(self, call: Callable[[], Any], what: str) -> Any:
        """`call()`, tried again on connection errors for up to `retry_s` seconds."""
        if self.retry_s <= 0 or getattr(_local, "off", False) or \
                self.engine.dialect.name in NOT_RETRIED:
            return call()
        start, attempt = time.monotonic(), 0
        while True:
            try:
                result = call()
            except Exception as e:
                if (lost := connection_error(e)) is None:
                    raise
                waited = time.monotonic() - start
                if waited >= self.retry_s:
                    raise DatabaseUnreachable(
                        f"the study database was unreachable for {waited:.0f} s ({what}: "
                        f"{self.describe(lost)}); start the worker again once it answers (its "
                        "running trial is re-queued), or allow longer with --db-retry") from None
                if attempt == 0:
                    self.log(f"database unreachable during {what} ({self.describe(lost)}); "
                             f"retrying for up to {self.retry_s:g} s")
                time.sleep(min(backoff(attempt), max(self.retry_s - waited, 0.05)))
                attempt += 1
                continue
            if attempt:
                self.log(f"database reachable again after {time.monotonic() - start:.1f} s "
                         f"({what})")
            return result

    def set_trial_state_values(self, trial_id, state, values=None) -> bool:
        tries = []

        def call():
            tries.append(1)
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                if len(tries) == 1:
                    raise  # finished by someone else: a real conflict
                done = RDBStorage.get_trial(self, trial_id)  # our lost commit did it?
                if done.state == state and (values is None or done.values == list(values)):
                    return True
                raise
        return self._outer(call, "set_trial_state_values")

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


# Methods that open their own session (each one a transaction): retried as a unit.
RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "create_new_trial", "_create_new_trial",
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


def orphans(storage, study_id: int) -> list[int]:
    """RUNNING trials without a heartbeat. Claims record the heartbeat before they release the
    claim lock, so under that lock such a trial is one whose claim died half-way."""
    from sqlalchemy import text

    query = text("SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h "
                 "ON h.trial_id = t.trial_id WHERE t.study_id = :s AND t.state = 'RUNNING' "
                 "AND h.trial_id IS NULL")
    with storage.engine.connect() as conn:
        return [row[0] for row in conn.execute(query, {"s": study_id})]
