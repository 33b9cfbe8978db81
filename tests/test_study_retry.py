"""The retry logic of study workers, on SQLite with injected connection losses (the real server
restart is in test_study_pgserver.py): a lost answer to a finished commit counts as done, a real
conflict still raises, an outage ends after the retry period in one line, and a trial whose claim
died before its heartbeat is re-queued by the next claim."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy.exc as sa
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from test_study import write_definition

from dsara.study import manage, retry, worker
from dsara.study.storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def lost_connection() -> sa.OperationalError:
    return sa.OperationalError("SELECT 1", {}, ConnectionResetError("server closed the connection"))


@pytest.fixture
def storage(tmp_path, monkeypatch):
    """A retrying storage; SQLite is retried here as a server would be (the test's injection)."""
    monkeypatch.setattr(retry, "NOT_RETRIED", ())
    monkeypatch.setattr(retry, "BACKOFF_FIRST_S", 0.01)
    lines = []
    st = open_storage(f"sqlite:///{tmp_path}/r.db", create=True, retry_s=30, log=lines.append)
    st.lines = lines
    return st


def test_a_finish_whose_answer_was_lost_counts_as_done(storage, monkeypatch):
    study = optuna.create_study(storage=storage, study_name="lost")
    trial = study.ask()
    real, calls = RDBStorage.set_trial_state_values, []

    def commit_then_lose_the_answer(self, trial_id, state, values=None):
        calls.append(state)
        done = real(self, trial_id, state, values)
        if len(calls) == 1:
            raise lost_connection()  # committed on the server; the answer never arrived
        return done

    monkeypatch.setattr(RDBStorage, "set_trial_state_values", commit_then_lose_the_answer)
    study.tell(trial, [0.25])  # retried; the second try finds it finished with these values
    assert calls == [TrialState.COMPLETE, TrialState.COMPLETE]
    frozen = storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.COMPLETE and frozen.values == [0.25]
    assert any("database unreachable during set_trial_state_values" in s for s in storage.lines)
    assert any("reachable again" in s for s in storage.lines)


def test_a_trial_finished_by_someone_else_still_conflicts(storage):
    study = optuna.create_study(storage=storage, study_name="conflict")
    trial = study.ask()
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # failed as stale elsewhere
    with pytest.raises(UpdateFinishedTrialError):  # not mistaken for our own lost commit
        storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.5])


def test_an_outage_longer_than_the_retry_period_is_one_line(storage, monkeypatch):
    study = optuna.create_study(storage=storage, study_name="down")
    trial = study.ask()
    tries = []

    def down(self, trial_id):
        tries.append(1)
        raise lost_connection()

    monkeypatch.setattr(RDBStorage, "get_trial", down)
    storage.retry_s = 0.3
    with pytest.raises(retry.DatabaseUnreachable, match="unreachable for 0 s .*--db-retry"):
        storage.get_trial(trial._trial_id)
    assert len(tries) > 2  # tried again with backoff, not once
    monkeypatch.undo()
    with pytest.raises(KeyError):  # other errors are not retried: a bad id fails at once
        storage.get_trial(10_000)


def test_connection_errors_are_told_from_other_errors():
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = lost_connection()
    assert retry.is_connection_error(wrapped)  # Optuna wraps the driver's error
    assert not retry.is_connection_error(sa.IntegrityError("INSERT", {}, Exception("dup")))
    assert not retry.is_connection_error(ValueError("no trial"))


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
