"""A study worker: claim a trial, run it with a heartbeat, record it; repeat until the budget is met.

Start as many workers as you like, on as many machines as see the storage and the artifact root.
The trial budget is the definition's ``[budget] n_trials``: complete trials of the study, all workers
together. It is exact: each claim -- fail stale trials, count COMPLETE + RUNNING trials, ask for a
trial -- runs under a lock held in the database (PostgreSQL advisory lock; a lock file beside a
SQLite database), so two workers never both take the last slot. A re-queued (WAITING) trial is
always taken first: it replaces a failed one and does not add to the count. While the budget is
met only by counting running trials, a worker waits (polling every heartbeat period) instead of
leaving: if one of those trials fails, or its worker dies, it takes over.

A worker outlives a restart of the database server (`retry`): its storage calls are retried with
backoff for up to ``retry_s`` seconds while the running search goes on; a claim is retried as a
whole and finds the trial an earlier try of it took, and the trial of a claim that died half-way is
re-queued by the next claim (`requeue`). The heartbeat runs until the result is stored; a result
whose trial was failed as stale meanwhile (an outage longer than the grace period) is stored on
the trial's retry (`requeue.store_on_retry`), or the worker says in one line where it is.

Samplers are not stored: every claim builds the definition's sampler seeded with ``seed + number of
trials so far``, so concurrent workers never draw the same values and one worker is reproducible.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Interrupted
from .definition import StudyDefinition
from .manage import open_study
from .objective import OtherDevice, objective
from .requeue import claimed_before, fail_orphans, fail_stale, requeue_now, store_on_retry, sweep
from .retry import DatabaseUnreachable, no_retry, writing_as
from .storage import GRACE_S, HEARTBEAT_S, RETRY_S, Heartbeat, claim_lock, open_storage
from .writes import new_token

MAX_CONSECUTIVE_FAILURES = 3  # a worker whose trials keep failing stops instead of burning budget
WAIT = "wait"  # claim(): the budget is met only by running trials: poll again later


@dataclass
class WorkerSummary:
    completed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    pruned: list[int] = field(default_factory=list)
    stopped: str = ""  # why the worker stopped


def make_sampler(definition: StudyDefinition, seed: int):
    import optuna

    if definition.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if definition.sampler == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    kw = {"population_size": definition.population_size} if definition.population_size else {}
    return optuna.samplers.NSGAIISampler(seed=seed, **kw)


def make_pruner(definition: StudyDefinition):
    import optuna

    if definition.pruner == "median" and len(definition.metrics) == 1:
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def claim(study, definition: StudyDefinition, storage):
    """The next trial to run (a re-queued one first); "wait" while the budget is met only by
    counting running trials (one may still fail or go stale); None when the study is done.
    Retried as a whole over lost connections, with one token: a try whose answer was lost is
    found by the next one (`requeue.claimed_before`), never run beside it."""
    token = new_token()
    return storage.retry(lambda: _claim(study, definition, storage, token),
                         "the claim of a trial")


def _claim(study, definition: StudyDefinition, storage, token: str):
    import optuna
    from optuna.trial import TrialState

    with no_retry(), claim_lock(storage, study.study_name) as locked:
        if (mine := claimed_before(study, token)) is not None:
            study.sampler = make_sampler(definition, definition.seed + mine.number)
            return optuna.Trial(study, mine._trial_id)
        fail_stale(study)  # dead workers' trials: failed, their retries queued by the sweep
        if locked:
            fail_orphans(study)
        sweep(study, definition.max_retry)
        trials = study.get_trials(deepcopy=False)
        states = Counter(t.state for t in trials)
        if states[TrialState.WAITING] == 0:
            if states[TrialState.COMPLETE] >= definition.n_trials:
                return None
            if states[TrialState.COMPLETE] + states[TrialState.RUNNING] >= definition.n_trials:
                return WAIT
        study.sampler = make_sampler(definition, definition.seed + len(trials))
        with warnings.catch_warnings(), writing_as(token):  # the trial taken carries the token
            warnings.simplefilter("ignore", UserWarning)  # heartbeats: `Heartbeat`, not optimize()
            trial = study.ask()
        storage.record_heartbeat(trial._trial_id)  # under the lock: see `requeue.orphans`
        return trial


def run_worker(name: str, storage: str | None = None, n_trials: int | None = None,
               timeout: float | None = None, heartbeat_s: int = HEARTBEAT_S,
               grace_s: int = GRACE_S, artifact_root: str | Path | None = None,
               log=print, retry_s: float = RETRY_S, break_lock: bool = False) -> WorkerSummary:
    """Run trials of study `name` until its budget is met, or `n_trials` / `timeout` (seconds)
    of this worker are used up. A database that goes away is retried for `retry_s` seconds."""
    import optuna

    st = open_storage(storage, heartbeat_s=heartbeat_s, grace_s=grace_s, retry_s=retry_s,
                      log=log)
    opened = open_study(name, storage, st, artifact_root=artifact_root)  # + stored definition
    study, definition, root = opened.study, opened.definition, opened.artifact_root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        st.heartbeat_stale_trial_callback = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=definition.max_retry)
    study.pruner = make_pruner(definition)
    if retry_s and grace_s <= retry_s + heartbeat_s:
        log(f"note: an outage longer than the grace period ({grace_s} s) but within --db-retry "
            f"({retry_s:g} s) lets other workers re-queue this worker's trial; its result then "
            "goes to the retry")
    summary, start, failures, waiting = WorkerSummary(), time.monotonic(), 0, False
    while True:
        if n_trials is not None and len(summary.completed) + len(summary.failed) \
                + len(summary.pruned) >= n_trials:
            summary.stopped = f"this worker ran its {n_trials} trials"
            break
        if timeout is not None and time.monotonic() - start >= timeout:
            summary.stopped = f"this worker's timeout of {timeout:g} s passed"
            break
        trial = claim(study, definition, st)
        if trial is None:
            summary.stopped = f"the study has its {definition.n_trials} complete trials"
            break
        if trial is WAIT:  # the last trials run elsewhere: wait until they end or go stale
            if not waiting:
                log("waiting for the running trials of other workers to finish")
            waiting = True
            time.sleep(heartbeat_s)
            continue
        waiting = False
        state = run_one(study, trial, definition, root, st, heartbeat_s, log, break_lock)
        {"COMPLETE": summary.completed, "FAIL": summary.failed,
         "PRUNED": summary.pruned}[state].append(trial.number)
        failures = failures + 1 if state == "FAIL" else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            summary.stopped = f"{failures} trials in a row failed; fix the cause and run again"
            break
    return summary


def run_one(study, trial, definition: StudyDefinition, root: Path, storage, heartbeat_s: int,
            log, break_lock: bool = False, objective_fn=None,
            resume_with: str = "dsara study run") -> str:
    """Run one claimed trial and tell the study; returns the trial's final state name.
    `objective_fn(trial, definition, root, log, taken_over=event)` replaces the study objective
    (an experiment passes its own, and `resume_with` names its command for the message of an
    interrupted trial). The heartbeat runs until the result is stored."""
    import optuna
    from optuna.trial import TrialState

    with Heartbeat(storage, trial._trial_id, heartbeat_s) as beat:
        try:
            if objective_fn is not None:
                values = objective_fn(trial, definition, root, log, taken_over=beat.taken_over)
            else:
                values = objective(trial, definition, root, log, taken_over=beat.taken_over,
                                   break_lock=break_lock)
        except optuna.TrialPruned as e:
            if not _told(study, trial, state=TrialState.PRUNED):
                return _dropped(trial, log)
            log(f"trial {trial.number}: {e}")
            return "PRUNED"
        except DatabaseUnreachable:
            raise  # the trial stays RUNNING: the next worker re-queues it once it is stale
        except (KeyboardInterrupt, Interrupted):
            requeue_now(study, trial._trial_id, definition.max_retry)  # resume later
            raise Interrupted(f"interrupted: trial {trial.number} of study {study.study_name!r} "
                              f"was re-queued; the next `{resume_with}` resumes it from its "
                              "last checkpoint") from None
        except OtherDevice:
            requeue_now(study, trial._trial_id, definition.max_retry)  # for a worker that can
            raise
        except Exception as e:  # DsaraError, a bug or a broken environment: the worker goes on
            return _fail(study, trial, e, log)
        return _complete(study, trial, values, definition, log)


def _told(study, trial, values=None, state=None) -> bool:
    """Tell the study; False if another worker finished the trial first (it missed the grace
    period, e.g. in an outage, and was failed as stale and re-queued)."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        study.tell(trial, values, state=state)
    except (UpdateFinishedTrialError, ValueError):  # ValueError: "Cannot tell a FAIL trial"
        if not study._storage.get_trial(trial._trial_id).state.is_finished():
            raise
        return False
    return True


def _dropped(trial, log) -> str:
    log(f"trial {trial.number} was failed as stale and re-queued by another worker while this "
        "one ran it (heartbeats missed the grace period); its retry continues from the last "
        "checkpoint")
    return "FAIL"


def _complete(study, trial, values: list[float], definition: StudyDefinition, log) -> str:
    if not _told(study, trial, values):
        return store_on_retry(study, trial, values, definition.max_retry, log)
    names = study.metric_names or []
    log(f"trial {trial.number} complete: " + ", ".join(
        f"{n} {v:.4f}" for n, v in zip(names, values)))
    return "COMPLETE"


def _fail(study, trial, error: Exception, log) -> str:
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    message = f"{type(error).__name__}: {error}".splitlines()[0][:500]
    try:
        trial.set_user_attr("error", message)
    except UpdateFinishedTrialError:
        return _dropped(trial, log)
    if not _told(study, trial, state=TrialState.FAIL):
        return _dropped(trial, log)
    log(f"trial {trial.number} failed: {message}")
    return "FAIL"
