"""Experiments as Optuna studies: one trial per unit, any number of workers, resumable.

An experiment is stored as an Optuna study (same storage as `dsara study`: ``--storage``, else
``$DSARA_STORAGE``, else ``sqlite:///dsara.db``) carrying its definition::

    study system attr "dsara:experiment"   the parsed TOML (plain JSON; kept out of the user
                                           attrs so that tools listing them stay short; an
                                           experiment created before reads user attr
                                           "experiment")
    study.user_attrs["experiment_sha256"]  its hash: `create` with another definition is refused
    study.user_attrs["artifact_root"]      folder holding <experiment>/<source>/seed-<s> units
    study.user_attrs["data_root"]          dataset folder given at create (a worker may override)

Every trial has one parameter, ``unit`` (e.g. ``dsara/s0``, ``random/s1/c2``), and user attr
"result" (the unit's figures). A worker claims, under the study's lock, a re-queued trial first,
else the first unit that is neither complete nor running nor failed in this worker's session, and
runs it with a heartbeat (`dsara.study.storage.Heartbeat`). A dead worker's unit is failed after the
grace period and re-queued (up to ``max_retry`` times) by the next worker that claims; the retry
continues the unit from its files. SIGTERM / Ctrl-C re-queue the running unit at once.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DsaraError
from ..study.manage import check_name, study_names
from ..study.requeue import claimed_before, fail_orphans, fail_stale, sweep
from ..study.retry import no_retry, writing_as
from ..study.storage import (
    GRACE_S,
    HEARTBEAT_S,
    RETRY_S,
    claim_lock,
    mask_url,
    open_storage,
    resolve_url,
)
from ..study.writes import new_token
from .definition import Experiment, Unit, experiment_from_dict, load_experiment

DEFAULT_ARTIFACT_ROOT = "runs/experiments"
EXPERIMENT_ATTR = "dsara:experiment"  # study system attribute holding the parsed TOML
DATA_ROOT_ENV = "DSARA_DATA_ROOT"
METRIC = "pgd20"  # the value told to Optuna; every figure is in the trial's "result"
WAIT = "wait"


@dataclass
class Opened:
    study: object  # optuna.Study
    experiment: Experiment
    artifact_root: Path
    data_root: str | None


def data_root_from(given: str | None) -> str | None:
    return given or os.environ.get(DATA_ROOT_ENV) or None


def create(name: str, source: str | Path, storage: str | None = None,
           artifact_root: str | Path | None = None, data_root: str | None = None):
    """(study, created); the same definition again is a no-op, another one an error."""
    import optuna

    check_name(name)
    exp = load_experiment(source)
    st = open_storage(storage, create=True)
    if name in study_names(st):
        opened = open_experiment(name, storage, st)
        if opened.study.user_attrs.get("experiment_sha256") != exp.sha256:
            raise DsaraError(f"experiment {name!r} already exists in "
                             f"{mask_url(resolve_url(storage))} with another definition than "
                             f"{exp.source}; choose another name or delete it (dsara study "
                             f"delete {name})")
        return opened.study, False
    root = Path(artifact_root or DEFAULT_ARTIFACT_ROOT).expanduser().resolve()
    study = optuna.create_study(storage=st, study_name=name, direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([METRIC])
    study._storage.set_study_system_attr(study._study_id, EXPERIMENT_ATTR, exp.raw)
    study.set_user_attr("experiment_sha256", exp.sha256)
    study.set_user_attr("experiment_source", Path(exp.source).name)
    study.set_user_attr("artifact_root", str(root))
    root_given = data_root_from(data_root)
    study.set_user_attr("data_root", str(Path(root_given).resolve()) if root_given else None)
    return study, True


def open_experiment(name: str, storage: str | None = None, st=None, *,
                    data_root: str | None = None) -> Opened:
    import optuna

    st = st or open_storage(storage)
    if name not in study_names(st):
        raise DsaraError(f"no experiment {name!r} in {mask_url(resolve_url(storage))}; create "
                         f"it first: dsara experiment create {name} --from DEFINITION")
    study = optuna.load_study(study_name=name, storage=st)
    raw = stored_experiment(study)
    if not isinstance(raw, dict):
        raise DsaraError(f"study {name!r} is not a dsara experiment (it has no experiment "
                         "definition); use `dsara study` for it")
    exp = experiment_from_dict(raw, f"experiment {name!r}")
    root = Path(study.user_attrs.get("artifact_root") or DEFAULT_ARTIFACT_ROOT)
    return Opened(study, exp, root, data_root_from(data_root) or study.user_attrs.get("data_root"))


def stored_experiment(study) -> dict | None:
    """The parsed TOML `create` stored on `study` (an older experiment: its user attr)."""
    raw = study._storage.get_study_system_attrs(study._study_id).get(EXPERIMENT_ATTR)
    return raw if raw is not None else study.user_attrs.get("experiment")


def unit_of(trial) -> str | None:
    return trial.params.get("unit")


def unit_states(study, exp: Experiment) -> dict[str, str]:
    """unit key -> COMPLETE | RUNNING | WAITING | FAIL | PENDING (the best state it reached)."""
    rank = {"COMPLETE": 4, "RUNNING": 3, "WAITING": 2, "FAIL": 1}
    states = dict.fromkeys((u.key for u in exp.units()), "PENDING")
    for t in study.get_trials(deepcopy=False):
        key, state = unit_of(t) or (t.system_attrs.get("fixed_params") or {}).get("unit"), \
            t.state.name
        if key in states and rank.get(state, 0) > rank.get(states[key], 0):
            states[key] = state
    return states


def claim(study, exp: Experiment, storage, skip: set[str]):
    """The next trial (a re-queued one first); WAIT while only running units are left; None
    when every unit is complete or failed in this worker's session (`skip`). Retried as a whole
    over lost connections, exactly once, as a study worker's claim (`dsara.study.worker.claim`)."""
    token = new_token()
    return storage.retry(lambda: _claim(study, exp, storage, skip, token), "the claim of a unit")


def _claim(study, exp: Experiment, storage, skip: set[str], token: str):
    import optuna

    with no_retry(), claim_lock(storage, study.study_name) as locked:
        if (mine := claimed_before(study, token)) is not None:
            return optuna.Trial(study, mine._trial_id)
        fail_stale(study)
        if locked:
            fail_orphans(study)
        sweep(study, exp.max_retry)
        states = unit_states(study, exp)
        if "WAITING" not in states.values():
            pending = [k for k, s in states.items() if s in ("PENDING", "FAIL") and k not in skip
                       and ready(exp, k, states)]
            if not pending:
                return WAIT if "RUNNING" in states.values() else None
            with writing_as(token):
                study.enqueue_trial({"unit": pending[0]})
        with warnings.catch_warnings(), writing_as(token):  # the trial taken carries the token
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()
        storage.record_heartbeat(trial._trial_id)  # under the lock: see `requeue.orphans`
        return trial


def ready(exp: Experiment, key: str, states: dict[str, str]) -> bool:
    """Whether unit `key` can start: a unit that derives another source's search again (`reuse`)
    waits until that source's unit of its seed is complete."""
    unit = Unit.from_key(key)
    reuse = exp.sources[unit.source].reuse
    return not reuse or states.get(Unit(reuse, unit.seed).key) == "COMPLETE"


@dataclass
class WorkerSummary:
    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: str = ""


def run_worker(name: str, storage: str | None = None, *, data_root: str | None = None,
               heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S, max_units: int | None = None,
               log=print) -> WorkerSummary:
    """Run units of experiment `name` until none is left (or `max_units` were run here)."""
    import optuna

    from ..study.worker import run_one

    st = open_storage(storage, heartbeat_s=heartbeat_s, grace_s=grace_s, retry_s=RETRY_S, log=log)
    opened = open_experiment(name, storage, st, data_root=data_root)
    study, exp = opened.study, opened.experiment
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        st.heartbeat_stale_trial_callback = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=exp.max_retry)
    keys = [u.key for u in exp.units()]
    summary, waiting = WorkerSummary(), False

    def objective(trial, definition, root, log, taken_over=None):
        return [unit_objective(trial, opened, keys, log, taken_over)]

    while max_units is None or len(summary.completed) + len(summary.failed) < max_units:
        trial = claim(study, exp, st, set(summary.failed))
        if trial is None:
            summary.stopped = "no unit left to run" + (
                f" ({len(summary.failed)} failed here: see `dsara experiment status {name}`)"
                if summary.failed else "")
            return summary
        if trial is WAIT:
            if not waiting:
                log("waiting for the units other workers are running")
            waiting = True
            time.sleep(heartbeat_s)
            continue
        waiting = False
        key = trial.suggest_categorical("unit", keys)
        state = run_one(study, trial, exp, opened.artifact_root, st, heartbeat_s, log,
                        objective_fn=objective, resume_with="dsara experiment run")
        (summary.completed if state == "COMPLETE" else summary.failed).append(key)
    summary.stopped = f"this worker ran its {max_units} units"
    return summary


def unit_objective(trial, opened: Opened, keys: list[str], log, taken_over) -> float:
    from .unit import run_unit

    key = trial.suggest_categorical("unit", keys)
    unit = Unit.from_key(key)
    unit_dir = opened.artifact_root / trial.study.study_name / unit.dir_name
    log(f"unit {key} (trial {trial.number}): {unit_dir}")
    result = run_unit(opened.experiment, unit, unit_dir, opened.data_root, log, taken_over)
    trial.set_user_attr("result", result)
    return float(result["accuracy"]["pgd20"]) if "pgd20" in result["accuracy"] \
        else float(result["worst_case"])
