"""The retry logic of study workers, on SQLite with injected connection losses (real PostgreSQL
faults are in test_study_faults.py, a real server restart in test_study_pgserver.py): a write whose
answer was lost counts as done exactly once -- never another worker's write of the same state --, a
retried creation creates one trial, a re-queue cut half-way is finished by the next sweep and never
doubled, only connection losses are retried, an outage ends in one line, and the storage pickles."""

from __future__ import annotations

import pickle

import optuna
import pytest
import sqlalchemy.exc as sa
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from test_study import write_definition

from dsara.study import manage, requeue, retry, worker, writes
from dsara.study.storage import claim_lock, open_storage

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def lost_connection() -> sa.OperationalError:
    return sa.OperationalError("COMMIT", {}, ConnectionResetError("server closed the connection"))


class Driver(Exception):
    """A driver error with an SQLSTATE, as psycopg raises them."""

    def __init__(self, sqlstate: str, message: str):
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.fixture
def storage(tmp_path, monkeypatch):
    """A retrying storage; SQLite is retried here as a server would be (the test's injection)."""
    monkeypatch.setattr(retry, "NOT_RETRIED", ())
    monkeypatch.setattr(retry, "BACKOFF_FIRST_S", 0.01)
    lines = []
    st = open_storage(f"sqlite:///{tmp_path}/r.db", create=True, retry_s=30, log=lines.append)
    st.lines = lines
    return st


def lose(monkeypatch, name: str, after_commit: bool, times: int = 1) -> list:
    """`writes.<name>` loses its connection on its first `times` calls: after its commit (the
    answer is lost) or before (rolled back). Returns the list of calls made."""
    real, calls = getattr(writes, name), []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) <= times and not after_commit:
            raise lost_connection()
        done = real(*args, **kwargs)
        if len(calls) <= times:
            raise lost_connection()
        return done

    monkeypatch.setattr(writes, name, flaky)
    return calls


def test_a_finish_whose_answer_was_lost_counts_as_done_once(storage, monkeypatch):
    study = optuna.create_study(storage=storage, study_name="lost")
    trial = study.ask()
    calls = lose(monkeypatch, "set_state", after_commit=True)
    study.tell(trial, [0.25])  # retried; the retry finds its own token: no second write
    assert len(calls) == 1
    frozen = storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.COMPLETE and frozen.values == [0.25]
    assert any("database unreachable during set_trial_state_values" in s for s in storage.lines)
    assert any("reachable again" in s for s in storage.lines)


def test_a_finish_rolled_back_is_written_again(storage, monkeypatch):
    study = optuna.create_study(storage=storage, study_name="rolled")
    trial = study.ask()
    calls = lose(monkeypatch, "set_state", after_commit=False)
    study.tell(trial, [0.5])
    assert len(calls) == 2 and storage.get_trial(trial._trial_id).values == [0.5]


def test_another_workers_fail_is_never_taken_for_our_lost_commit(storage, monkeypatch):
    """Our FAIL was rolled back; meanwhile another worker failed the trial (same state, no
    values): our retry must not count that as ours, or a second retry would be queued."""
    study = optuna.create_study(storage=storage, study_name="theirs")
    trial = study.ask()
    real = writes.set_state

    def lost_then_theirs(st, trial_id, state, values, token, requeue=False):
        monkeypatch.setattr(writes, "set_state", real)
        real(st, trial_id, TrialState.FAIL, None, writes.new_token(), True)  # the other worker
        raise lost_connection()  # ours never committed

    monkeypatch.setattr(writes, "set_state", lost_then_theirs)
    assert storage.fail_for_retry(trial._trial_id) is False  # not ours: nothing to re-queue
    with pytest.raises(UpdateFinishedTrialError):  # a finish after it: a real conflict
        storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])


def test_a_creation_whose_answer_was_lost_creates_one_trial(storage, monkeypatch):
    study = optuna.create_study(storage=storage, study_name="create")
    real = writes.create_trial
    calls = lose(monkeypatch, "create_trial", after_commit=True)
    trial = study.ask()  # created, answer lost, retried: the retry finds the trial by its token
    assert len(calls) == 1 and [t.number for t in study.get_trials()] == [trial.number] == [0]
    monkeypatch.setattr(writes, "create_trial", real)
    lose(monkeypatch, "create_trial", after_commit=False)  # rolled back: created by the retry
    study.ask()
    assert [t.number for t in study.get_trials()] == [0, 1]


def test_a_requeue_cut_half_way_is_finished_by_the_next_sweep_once(storage):
    study = optuna.create_study(storage=storage, study_name="sweep")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    assert storage.fail_for_retry(trial._trial_id)  # ... and the connection went: no copy yet
    with claim_lock(storage, "sweep"):
        assert requeue.sweep(study, max_retry=2) == [0]
        assert requeue.sweep(study, max_retry=2) == []  # idempotent: the copy names trial 0
    dead, copy = study.get_trials()
    assert (dead.state, copy.state) == (TrialState.FAIL, TrialState.WAITING)
    assert copy.params == dead.params and copy.system_attrs["retry_history"] == [0]


def test_a_genuine_failure_is_not_requeued(storage):
    study = optuna.create_study(storage=storage, study_name="genuine")
    study.tell(study.ask(), state=TrialState.FAIL)  # the objective raised: not a dead worker
    assert requeue.sweep(study, max_retry=2) == [] and len(study.get_trials()) == 1


def test_an_outage_longer_than_the_retry_period_is_one_line(storage, monkeypatch):
    study = optuna.create_study(storage=storage, study_name="down")
    trial = study.ask()
    tries, real = [], optuna.storages.RDBStorage.get_trial

    def down(self, trial_id):
        tries.append(1)
        raise lost_connection()

    monkeypatch.setattr(optuna.storages.RDBStorage, "get_trial", down)
    storage.retry_s = 0.3
    with pytest.raises(retry.DatabaseUnreachable, match="unreachable for 0 s .*--db-retry"):
        storage.get_trial(trial._trial_id)
    assert len(tries) > 2  # tried again with backoff, not once
    monkeypatch.setattr(optuna.storages.RDBStorage, "get_trial", real)
    with pytest.raises(KeyError):  # other errors are not retried: a bad id fails at once
        storage.get_trial(10_000)


@pytest.mark.parametrize("sqlstate, message", [("40P01", "deadlock detected"),
                                               ("57014", "canceling statement due to "
                                                         "statement timeout")])
def test_database_errors_that_are_not_lost_connections_are_one_line(storage, monkeypatch,
                                                                    sqlstate, message):
    study = optuna.create_study(storage=storage, study_name="deadlock")
    trial = study.ask()
    tries = []

    def refused(*args):
        tries.append(1)
        raise sa.OperationalError("UPDATE trials", {}, Driver(sqlstate, message))

    monkeypatch.setattr(writes, "set_state", refused)
    with pytest.raises(retry.DatabaseError, match=f"not a lost connection.*{message}") as e:
        study.tell(trial, [0.5])
    assert len(tries) == 1 and "\n" not in str(e.value)
    assert not any("unreachable" in line for line in storage.lines)


def test_connection_errors_are_told_from_other_errors():
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = lost_connection()
    assert retry.is_connection_error(wrapped)  # Optuna wraps the driver's error
    for state in ("08006", "57P01"):  # connection failure; the server shutting down
        assert retry.is_connection_error(sa.OperationalError("", {}, Driver(state, "gone")))
    assert not retry.is_connection_error(sa.OperationalError("", {}, Driver("40P01", "dl")))
    assert not retry.is_connection_error(sa.IntegrityError("INSERT", {}, Exception("dup")))
    assert not retry.is_connection_error(ValueError("no trial"))


def test_the_storage_pickles_and_the_copy_works(tmp_path):
    st = open_storage(f"sqlite:///{tmp_path}/p.db", create=True, retry_s=30,
                      log=lambda line: None)  # a closure: dropped from the copy
    study = optuna.create_study(storage=st, study_name="pickled")
    copy = pickle.loads(pickle.dumps(st))
    assert copy.retry_s == 30 and copy.get_study_id_from_name("pickled") == study._study_id
    copy.set_trial_state_values(copy.create_new_trial(study._study_id), TrialState.COMPLETE, [1])
    assert [t.values for t in study.get_trials()] == [[1.0]]


def test_a_claim_that_died_before_its_heartbeat_is_requeued(tmp_path):
    db = f"sqlite:///{tmp_path}/o.db"
    manage.create("orph", write_definition(tmp_path, budget__n_trials=1), db, tmp_path / "art")
    st = open_storage(db, heartbeat_s=1, grace_s=60)
    opened = manage.open_study("orph", db, st)
    study = opened.study
    orphan = study.ask()  # created, then the worker died before recording a heartbeat
    claimed = worker.claim(study, opened.definition, st)
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL  # the orphan: failed ...
    assert claimed.number == 1 and trials[1].state == TrialState.RUNNING  # ... and its retry run
    frozen = st.get_trial(claimed._trial_id)
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen) \
        == orphan.number
    assert worker.claim(study, opened.definition, st) == worker.WAIT  # budget 1: one running


def test_a_claim_whose_answer_was_lost_is_found_by_its_retry(tmp_path, monkeypatch):
    """The claim's heartbeat write lost its connection after the trial was created: the whole
    claim is retried and finds that trial (by its token) instead of re-queuing it as an orphan."""
    monkeypatch.setattr(retry, "NOT_RETRIED", ())
    monkeypatch.setattr(retry, "BACKOFF_FIRST_S", 0.01)
    db = f"sqlite:///{tmp_path}/c.db"
    manage.create("cl", write_definition(tmp_path, budget__n_trials=1), db, tmp_path / "art")
    st = open_storage(db, heartbeat_s=1, grace_s=60, retry_s=30)
    opened = manage.open_study("cl", db, st)
    real, beats = optuna.storages.RDBStorage.record_heartbeat, []

    def lost_once(self, trial_id):
        beats.append(trial_id)
        if len(beats) == 1:
            raise lost_connection()
        return real(self, trial_id)

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", lost_once)
    trial = worker.claim(opened.study, opened.definition, st)
    assert trial.number == 0 and beats == [trial._trial_id] * 2
    assert [t.state for t in opened.study.get_trials()] == [TrialState.RUNNING]  # one, no orphan


def test_a_result_whose_retry_another_worker_finished_is_reported_not_raised(storage,
                                                                             monkeypatch):
    """The retry was read as queued, then its worker took and finished it before our take."""
    study = optuna.create_study(storage=storage, study_name="race", directions=["maximize"] * 2)
    trial = study.ask()
    storage.fail_for_retry(trial._trial_id)  # failed as stale by another worker
    with claim_lock(storage, "race"):
        requeue.sweep(study, max_retry=2)
    queued = study.get_trials()[1]  # WAITING, as we read it
    other = study.ask()  # the other worker takes the retry ...
    study.tell(other, [0.5, 0.25])  # ... and finishes it from the last checkpoint
    monkeypatch.setattr(requeue, "retry_of", lambda trials, number: queued)
    logs = []
    assert requeue.store_on_retry(study, trial, [0.5, 0.25], 2, logs.append) == "FAIL"
    assert "values [0.5, 0.25] not stored; its retry, trial 1, is COMPLETE elsewhere" in logs[0]
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.COMPLETE]
