"""Failed trials and their retries: each trial a dead or stopped worker left is run once more.

- `fail_stale` / `fail_orphans` fail the trials of dead workers (heartbeat older than the grace
  period; RUNNING without any heartbeat, a claim that died half-way) with
  `RetryingRDBStorage.fail_for_retry`: FAIL and "queue a retry" in one transaction.
- `sweep` queues the retry (a WAITING copy: same parameters, Optuna's retry record naming the failed
  trial, so it continues the failed trial's run directory) of every trial failed that way that has
  none yet, up to ``max_retry`` retries per original trial. It is idempotent -- a copy's record
  names the trial it replaces -- and runs under the claim lock at every claim, so at a worker's
  start and every time a worker waits or asks for work: a retry whose queuing was cut off by a lost
  connection is queued by the next claim, and never twice.
- `store_on_retry`: a worker whose trial was failed as stale while its result was on its way (an
  outage longer than the grace period) stores the result on the trial's queued retry, or says in one
  line why it cannot (another worker already runs the retry, from this trial's last checkpoint).
"""

from __future__ import annotations

import warnings

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from .retry import no_retry, writing_as
from .storage import claim_lock
from .writes import failed_for_retry, new_token, token_of, trial_with_token


def backend(study):
    """The study's `RetryingRDBStorage` (Optuna wraps it in a cache that knows no `fail_for_retry`;
    the cache re-reads unfinished trials, so writing past it is safe)."""
    return getattr(study._storage, "_backend", study._storage)


def fail_stale(study) -> list[int]:
    """Fail the study's trials whose heartbeat is older than the grace period; their ids."""
    st = backend(study)
    return [i for i in st._get_stale_trial_ids(study._study_id) if st.fail_for_retry(i)]


def orphans(storage, study_id: int) -> list[int]:
    """RUNNING trials without a heartbeat. Claims record the heartbeat before they release the
    claim lock, so under that lock such a trial is one whose claim died half-way."""
    from sqlalchemy import text

    query = text("SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h "
                 "ON h.trial_id = t.trial_id WHERE t.study_id = :s AND t.state = 'RUNNING' "
                 "AND h.trial_id IS NULL")
    with storage.engine.connect() as conn:
        return [row[0] for row in conn.execute(query, {"s": study_id})]


def fail_orphans(study) -> list[int]:
    """Fail the RUNNING trials without a heartbeat (call under the claim lock); their ids."""
    st = backend(study)
    return [i for i in orphans(st, study._study_id) if st.fail_for_retry(i)]


def retry_of(trials, number: int):
    """The trial queued to retry trial `number`, or None."""
    return next((t for t in trials if (t.system_attrs.get("retry_history") or [None])[-1]
                 == number), None)


def sweep(study, max_retry: int | None) -> list[int]:
    """Queue the retry of every trial failed for one that has none yet (call under the claim
    lock); the numbers of the trials retried."""
    import optuna

    st = backend(study)
    wanted = failed_for_retry(st, study._study_id)
    if not wanted:
        return []
    trials = st.get_all_trials(study._study_id, deepcopy=False)
    queued = []
    for t in trials:
        if t._trial_id in wanted and retry_of(trials, t.number) is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, t)
            queued.append(t.number)
    return queued


def claimed_before(study, token: str):
    """The trial an earlier try of this claim took (its answer was lost), as an `optuna.Trial`
    with a fresh heartbeat; None if that try took none."""
    import optuna

    st = backend(study)
    mine = trial_with_token(st, study._study_id, token)
    if mine is None or st.get_trial(mine).state != TrialState.RUNNING:
        return None
    st.record_heartbeat(mine)
    return optuna.Trial(study, mine)


def requeue_now(study, trial_id: int, max_retry: int | None) -> None:
    """Fail a trial this worker stops (interrupted) and queue its retry at once."""
    backend(study).fail_for_retry(trial_id)
    with claim_lock(backend(study), study.study_name):
        sweep(study, max_retry)


def store_on_retry(study, trial, values: list[float], max_retry: int | None, log) -> str:
    """Store `values` of `trial` -- failed as stale by another worker meanwhile -- on its queued
    retry; "COMPLETE" if stored, else "FAIL" after one line saying where the value is."""
    st, token = backend(study), new_token()

    def attempt():
        with no_retry(), claim_lock(st, study.study_name):
            sweep(study, max_retry)  # queued now if a lost connection cut the stale fail short
            copy = retry_of(st.get_all_trials(study._study_id, deepcopy=False), trial.number)
            if copy is None:
                return None, False
            with writing_as(token):
                return copy, _take_and_tell(st, trial, copy, values, token)
    copy, stored = st.retry(attempt, "storing a result on its retry")
    head = (f"trial {trial.number} was failed as stale while its result was being stored (the "
            "database was away longer than the grace period)")
    if stored:
        log(f"{head}; its result is stored on its retry, trial {copy.number}")
        return "COMPLETE"
    if copy is not None:
        copy = st.get_trial(copy._trial_id)  # its state now, for the message
    where = (f"its retry, trial {copy.number}, is {copy.state.name} elsewhere (run from this "
             "trial's last checkpoint)" if copy is not None else "it has no retry left "
             "(max_retry)")
    log(f"{head}: values {values} not stored; {where}")
    return "FAIL"


def _take(st, trial_id: int) -> bool:
    """WAITING -> RUNNING; False if another worker took it, or took and finished it, first."""
    try:
        return st.set_trial_state_values(trial_id, TrialState.RUNNING)
    except UpdateFinishedTrialError:
        return False


def _take_and_tell(st, trial, copy, values: list[float], token: str) -> bool:
    """Claim the queued `copy` (or find it claimed by an earlier try of ours), give it `trial`'s
    attributes and complete it with `values`; False if another worker has it."""
    ours = token_of(st, copy._trial_id) == token
    if copy.state.is_finished():
        return ours and copy.state == TrialState.COMPLETE
    if not ours and not _take(st, copy._trial_id):
        return False
    frozen = st.get_trial(trial._trial_id)
    for key, value in frozen.user_attrs.items():
        st.set_trial_user_attr(copy._trial_id, key, value)
    st.set_trial_user_attr(copy._trial_id, "result_of", trial.number)
    return st.set_trial_state_values(copy._trial_id, TrialState.COMPLETE, values)
