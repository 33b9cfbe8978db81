"""Exactly-once trial writes: every write that may be retried carries a client token.

A retried call cannot tell "my commit was lost" from "my commit reached the server and only its
answer was lost" -- unless the write left a mark that only this call could have left. Each trial
creation and each state change (claim, finish, fail) writes a fresh random token into
``dsara_trial_writes`` in the same transaction as the write itself; a retry first looks its token
up, and finds either its own committed write or nothing. Another worker's write of the same state
carries another token, so it is never mistaken for ours.

A trial failed so that its retry gets queued (stale, orphaned, interrupted) is marked ``requeue``
in that same transaction: the retry is queued later by `requeue.sweep`, so "fail, then queue a
copy" cannot be cut half-way by a lost connection.

The table is dsara's own (Optuna's tables are left as they are; Optuna's system attributes would
show the tokens to every reader). It has no foreign key: Optuna deletes studies without knowing it,
and rows of deleted trials are harmless (tokens are never reused; ``merge`` replaces a row whose
trial id SQLite reused).

The two writers copy `RDBStorage._create_new_trial` / `set_trial_state_values` of Optuna 5.1 with
the token added, using Optuna's own models and helpers.
"""

from __future__ import annotations

import copy
import uuid
from datetime import datetime

from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Boolean, Integer, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class _Base(DeclarativeBase):
    pass


class TrialWrite(_Base):
    """The last creation or state change of a trial: whose it was, and whether it asks for a
    retry to be queued."""

    __tablename__ = "dsara_trial_writes"
    trial_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    study_id: Mapped[int] = mapped_column(Integer, index=True)
    token: Mapped[str] = mapped_column(String(32), index=True)
    requeue: Mapped[bool] = mapped_column(Boolean, default=False)


def new_token() -> str:
    return uuid.uuid4().hex


def create_table(engine) -> None:
    _Base.metadata.create_all(engine)


def _stamp(session, trial, token: str, requeue: bool = False) -> None:
    session.merge(TrialWrite(trial_id=trial.trial_id, study_id=trial.study_id, token=token,
                             requeue=requeue))


def create_trial(storage, study_id: int, template: FrozenTrial | None, token: str) -> FrozenTrial:
    """A new trial (RUNNING, or as `template` says), stamped with `token`, in one transaction."""
    with _create_scoped_session(storage.scoped_session) as session:
        # the study row is locked: trial numbers are counted, one creator at a time
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        trial = storage._get_prepared_new_trial(study_id, template, session)
        session.flush()
        _stamp(session, trial, token)
        return _frozen(trial, template)


def _frozen(trial, template: FrozenTrial | None) -> FrozenTrial:
    if template is not None:
        frozen = copy.deepcopy(template)
        frozen.number, frozen.datetime_start = trial.number, trial.datetime_start
        frozen._trial_id = trial.trial_id
        return frozen
    return FrozenTrial(number=trial.number, state=trial.state, value=None, values=None,
                       datetime_start=trial.datetime_start, datetime_complete=None, params={},
                       distributions={}, user_attrs={}, system_attrs={},
                       intermediate_values={}, trial_id=trial.trial_id)


def set_state(storage, trial_id: int, state: TrialState, values, token: str,
              requeue: bool = False) -> bool:
    """`RDBStorage.set_trial_state_values`, stamped with `token` when the state changes."""
    try:
        with _create_scoped_session(storage.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            storage.check_trial_is_updatable(trial_id, trial.state)
            for objective, v in enumerate(values or ()):
                storage._set_trial_value_without_commit(session, trial, objective, v)
            if state == TrialState.RUNNING and trial.state != TrialState.WAITING:
                return False  # taken by another worker
            trial.state = state
            if state == TrialState.RUNNING:
                trial.datetime_start = datetime.now()
            if state.is_finished():
                trial.datetime_complete = datetime.now()
            _stamp(session, trial, token, requeue)
    except IntegrityError:
        return False
    return True


def token_of(storage, trial_id: int) -> str | None:
    """The token of the trial's last creation or state change."""
    with storage.engine.connect() as conn:
        return conn.execute(select(TrialWrite.token).where(TrialWrite.trial_id == trial_id)
                            ).scalar_one_or_none()


def trial_with_token(storage, study_id: int, token: str) -> int | None:
    """The trial of `study_id` whose last write carries `token`, if any (a claim's token marks
    the one trial it took)."""
    query = select(TrialWrite.trial_id).where(TrialWrite.study_id == study_id,
                                              TrialWrite.token == token).limit(1)
    with storage.engine.connect() as conn:
        return conn.execute(query).scalar_one_or_none()


def failed_for_retry(storage, study_id: int) -> set[int]:
    """Ids of the study's FAIL trials whose failure asked for a retry to be queued."""
    t = models.TrialModel
    query = select(t.trial_id).join(TrialWrite, TrialWrite.trial_id == t.trial_id).where(
        t.study_id == study_id, t.state == TrialState.FAIL, TrialWrite.requeue.is_(True))
    with storage.engine.connect() as conn:
        return set(conn.execute(query).scalars())
