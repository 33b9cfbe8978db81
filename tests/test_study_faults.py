"""Fault injection on a real PostgreSQL server of the test's own (`pgserver`): every write a study
worker makes -- create, claim, heartbeat, tell, fail, re-queue -- has its transaction cut at COMMIT,
in both ways a connection can fail there:

- ``rolled-back``: the server terminates the session just before the COMMIT; the transaction is
  rolled back and the worker's COMMIT fails with the server's own error;
- ``answer-lost``: the COMMIT goes through, then the server terminates the session and the driver
  reports the lost connection: the write is done, the worker does not know it.

Each run starts with a dead worker's stale trial (heartbeat an hour old), so one worker's run goes
through every path: fail the stale trial, queue its retry, claim it, beat, tell, create a new
trial, tell. After each: exactly the budget of trials COMPLETE, the dead trial the only FAIL, no
RUNNING or WAITING trial, every run directory searched once (each epoch logged once), every value
stored, the worker ended normally (no traceback). A last test cuts the database off one worker
(a network partition) during its tell for longer than the grace period, while another worker fails
the trial as stale and takes its retry: the value is reported, and the retry -- continued from the
trial's last checkpoint -- stores the same value.

Slow (a server, real searches); `.ci/run` runs them (DSARA_REQUIRE_POSTGRES=1).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import defaultdict

import optuna
import pytest
from optuna.trial import TrialState
from pgserver import Server, why_not
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.default import DefaultDialect
from test_study import backdate_heartbeat, write_definition

from dsara.search.rundir import RunDir
from dsara.study import manage, retry, worker
from dsara.study.storage import open_storage

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(3600),
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
HANG_S = 1800  # waits for an event give up after this long: a hang, never a speed

_WHY = why_not()
if _WHY and os.environ.get("DSARA_REQUIRE_POSTGRES") == "1":
    raise RuntimeError(f"DSARA_REQUIRE_POSTGRES=1 but {_WHY}")
if _WHY:
    pytest.skip(_WHY, allow_module_level=True)

# which transaction of the worker each path is (its statements, as SQLAlchemy sends them)
PATHS = {
    "create": lambda t: "INSERT INTO trials " in t and "'WAITING'" not in t,
    "requeue": lambda t: "INSERT INTO trials " in t and "'state': 'WAITING'" in t,
    "claim": lambda t: "UPDATE trials SET state=%(state)s, datetime_start=" in t,  # WAITING->RUNNING
    "heartbeat": lambda t: "trial_heartbeats (trial_id, heartbeat)" in t
    or "UPDATE trial_heartbeats" in t,
    "tell": lambda t: "'state': 'COMPLETE'" in t,
    "fail": lambda t: "'state': 'FAIL'" in t,
}


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


def _key(connection) -> int:
    return id(getattr(connection, "dbapi_connection", connection))


class CommitFault:
    """Cuts the first transaction that `matches` at its COMMIT, `after` it or before it; the
    session is really terminated by the server (pg_terminate_backend)."""

    def __init__(self, server: Server, matches, after: bool):
        self.server, self.matches, self.after = server, matches, after
        self.statements, self.fired = defaultdict(list), None

    def install(self, monkeypatch) -> None:
        real_commit, real_rollback = DefaultDialect.do_commit, DefaultDialect.do_rollback

        def record(conn, cursor, statement, parameters, context, executemany):
            self.statements[_key(conn.connection)].append(f"{statement} {parameters!r}")

        def commit(dialect, connection):
            text = "\n".join(self.statements.pop(_key(connection), []))
            if self.fired is not None or not self.matches(text):
                return real_commit(dialect, connection)
            self.fired = text
            if not self.after:
                self.terminate(connection)
                return real_commit(dialect, connection)  # fails: the server left
            real_commit(dialect, connection)
            self.terminate(connection)
            import psycopg

            raise psycopg.OperationalError("server closed the connection unexpectedly")

        def rollback(dialect, connection):
            self.statements.pop(_key(connection), None)
            return real_rollback(dialect, connection)

        event.listen(Engine, "before_cursor_execute", record)
        monkeypatch.setattr(DefaultDialect, "do_commit", commit)
        monkeypatch.setattr(DefaultDialect, "do_rollback", rollback)
        self.uninstall = lambda: event.remove(Engine, "before_cursor_execute", record)

    def terminate(self, connection) -> None:
        import psycopg

        pid = getattr(connection, "dbapi_connection", connection).info.backend_pid
        with psycopg.connect(self.server.dsn(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 60000)", [pid])  # waits until gone


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(retry, "BACKOFF_FIRST_S", 0.05)
    monkeypatch.setattr(retry, "BACKOFF_MAX_S", 0.5)


def dead_workers_trial(study_name: str, url: str, tmp_path, budget: int = 2):
    """A study whose trial 0 was claimed by a worker that died: RUNNING, heartbeat an hour old."""
    path = write_definition(tmp_path, search__epochs=1, search__stage1_epochs=0,
                            search__max_steps=1, budget__n_trials=budget)
    manage.create(study_name, path, url, tmp_path / "art")
    st = open_storage(url, heartbeat_s=1, grace_s=60)
    opened = manage.open_study(study_name, url, st)
    trial = worker.claim(opened.study, opened.definition, st)
    backdate_heartbeat(st, trial._trial_id, hours=1)
    st.engine.dispose()
    return path


def check_exactly_once(url: str, name: str, tmp_path, budget: int, logs: list[str],
                       failed: tuple[int, ...] = (0,)) -> None:
    """Exactly `budget` COMPLETE trials, only the `failed` ones FAIL, nothing else."""
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == budget, (states, logs)
    assert tuple(t.number for t in trials if t.state == TrialState.FAIL) == failed, (states, logs)
    assert len(trials) == budget + len(failed), (states, logs)  # nothing created twice
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len({t.user_attrs["run_dir"] for t in done}) == budget  # no search run twice
    for t in done:
        rd = RunDir(tmp_path / "art" / t.user_attrs["run_dir"])
        assert [r["epoch"] for r in rd.read_metrics()] == [1]  # each epoch logged once
        names = t.user_attrs["metrics"]
        assert t.values == [names["clean_acc"], names["pgd_acc"]]  # the value stored
    assert not any("Traceback" in line for line in logs)


@pytest.mark.parametrize("mode", ["rolled-back", "answer-lost"])
@pytest.mark.parametrize("path", list(PATHS))
def test_a_cut_commit_leaves_every_trial_exactly_once(tmp_path, server, monkeypatch,
                                                      fast_retries, path, mode):
    name = f"{path}-{mode}"
    dead_workers_trial(name, server.url, tmp_path)
    fault = CommitFault(server, PATHS[path], after=mode == "answer-lost")
    fault.install(monkeypatch)
    logs: list[str] = []
    try:
        summary = worker.run_worker(name, server.url, heartbeat_s=1, grace_s=60, retry_s=120,
                                    log=logs.append)
    finally:
        fault.uninstall()
    assert fault.fired, f"no {path} transaction was cut:\n" + "\n".join(logs)
    assert summary.stopped == "the study has its 2 complete trials", logs
    assert len(summary.completed) == 2 and not summary.failed, logs  # nothing taken over
    assert any("database unreachable" in line for line in logs), logs
    check_exactly_once(server.url, name, tmp_path, 2, logs)


class Partition:
    """Every statement of the listed threads fails as a lost connection while `cut` is set."""

    def __init__(self):
        self.cut, self.threads = threading.Event(), set()

    def install(self) -> None:
        def refuse(conn, cursor, statement, parameters, context, executemany):
            if self.cut.is_set() and threading.current_thread().name in self.threads:
                import psycopg

                raise psycopg.OperationalError("connection to server failed: No route to host")
        event.listen(Engine, "before_cursor_execute", refuse)
        self.uninstall = lambda: event.remove(Engine, "before_cursor_execute", refuse)


def test_an_outage_longer_than_the_grace_period_during_tell_loses_no_value(
        tmp_path, server, monkeypatch, fast_retries):
    """Worker A is cut off as it tells its first value. Worker B (grace 2 s) sees A's trial go
    stale -- really: A's heartbeats fail too --, fails it, takes its retry and ends the outage.
    A's retried tell finds its trial failed: A reports the value in one line and goes on; B's
    retry continues from A's last checkpoint and stores the same value. The budget ends exact."""
    name, url = "outage", server.url
    dead_workers_trial(name, url, tmp_path)
    partition, logs, b_logs, b = Partition(), [], [], {"claimed": threading.Event()}
    partition.threads.add(threading.current_thread().name)
    partition.install()
    real_tell = worker._told

    def tell_in_an_outage(study, trial, values=None, state=None):
        if state is None and "thread" not in b:  # A's first value: the outage starts
            partition.threads.add(f"heartbeat-{trial._trial_id}")
            partition.cut.set()
            b["thread"] = threading.Thread(target=worker_b, args=(trial._trial_id,),
                                           name="worker-b")
            b["thread"].start()
        return real_tell(study, trial, values, state=state)  # retried through the outage

    def worker_b(a_trial_id: int) -> None:
        st = open_storage(url, heartbeat_s=1, grace_s=2, retry_s=120, log=b_logs.append)
        opened = manage.open_study(name, url, st)
        deadline = time.monotonic() + HANG_S
        while a_trial_id not in st._get_stale_trial_ids(opened.study._study_id):
            assert time.monotonic() < deadline, "A's trial never went stale"
            time.sleep(0.2)  # A's last heartbeat ages in real time
        b["copy"] = worker.claim(opened.study, opened.definition, st)
        partition.cut.clear()  # the outage ends
        b["state"] = worker.run_one(opened.study, b["copy"], opened.definition,
                                    opened.artifact_root, st, 1, b_logs.append)

    monkeypatch.setattr(worker, "_told", tell_in_an_outage)
    try:
        summary = worker.run_worker(name, url, heartbeat_s=1, grace_s=60, retry_s=120,
                                    log=logs.append)
    finally:
        partition.uninstall()
    b["thread"].join(HANG_S)
    assert b.get("state") == "COMPLETE", b_logs
    assert summary.stopped == "the study has its 2 complete trials", logs
    reported = [line for line in logs if "failed as stale while its result" in line]
    assert len(reported) == 1 and "not stored" in reported[0], logs
    assert re.search(f"its retry, trial {b['copy'].number}, is (RUNNING|COMPLETE) elsewhere",
                     reported[0])  # B may or may not have finished it by then
    a_number = b["copy"].number - 1
    check_exactly_once(url, name, tmp_path, 2, logs + b_logs, failed=(0, a_number))
    copy = optuna.load_study(study_name=name, storage=url).trials[b["copy"].number]
    assert copy.system_attrs["retry_history"] == [0, a_number]  # A's trial, retried
    assert copy.user_attrs["resumed_from_epoch"] == 1  # from A's last checkpoint: not re-run
    assert f"values {copy.values} not stored" in reported[0]  # A's value is the one stored
