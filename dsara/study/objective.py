"""One trial of a study: a DSARA search with the trial's swept values, then its objective values.

The trial's search runs in ``<artifact root>/<study>/trial-<N>``. A re-queued trial (its worker
died) gets the number of the trial it retries from Optuna's retry record and continues that trial's
run directory from its last checkpoint; ``resumed_from_epoch`` on the trial says where. The run
directory's files also go to the study's Optuna artifact store after every epoch (`artifacts`), so
a retry on a machine that does not see the dead worker's run directory resumes from the store.

Objectives (all accuracies in [0, 1], maximized):

- ``supernet``: the search's last-epoch arch-val accuracies, clean and under the search's PGD.
  Cheap; measures the supernet, not the network one would deploy.
- ``retrain``: a short adversarial retrain (`dsara.train`, [objective.retrain]) of the derived
  network, then its clean and PGD accuracy (PGD with `val_steps` steps of eps/4) on a validation
  split held out from the retraining data (`val_size` images). The test split is never used, so it
  stays clean for the final report.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DsaraError
from ..search import run as search_run
from ..search.resume import effects, saved_device_type
from ..search.rundir import RunDir
from ..utils.device import resolve_device
from ..utils.lock import LOCK_NAME, run_lock
from . import artifacts
from .definition import StudyDefinition, retrain_config
from .retry import best_effort

# bulky per-epoch fields left out of the metrics recorded on the trial (the run dir keeps them)
BULKY = ("genotype", "genotype_text")
SEARCH_METRIC = {"clean_acc": "val_clean_acc", "pgd_acc": "val_pgd_acc"}


def trial_run_dir(study_name: str, number: int) -> str:
    """A trial's run directory, relative to the study's artifact root."""
    return f"{study_name}/trial-{number}"


def retried_number(trial) -> int | None:
    """The number of the original trial this one retries (Optuna keeps it in system attrs)."""
    import optuna

    frozen = trial.study._storage.get_trial(trial._trial_id)  # live trials hide system attrs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


class OtherDevice(DsaraError):
    """A retried trial's checkpoint was searched on another device type, and its study does not
    allow continuing it there."""


def check_device(cfg, run_dir: Path, definition: StudyDefinition, number: int) -> None:
    """A retry continues on the device type its checkpoint was searched on, as `dsara search
    --resume` does; the study's ``[budget] resume_on_other_device`` allows otherwise."""
    before = saved_device_type(RunDir(run_dir).load_checkpoint())
    now = resolve_device(cfg.device).type
    if before == now or definition.resume_on_other_device:
        return
    old, new = effects(cfg, before), effects(cfg, now)
    changes = [f"{k} {old[k]} -> {new[k]}" for k in old if old[k] != new[k]] + ["random streams"]
    raise OtherDevice(f"trial {number} continues a search made on {before} and this worker runs "
                      f"on {now}, which changes {', '.join(changes)}; it stays queued: run it on a "
                      f"{before} worker, or create the study with [budget] "
                      "resume_on_other_device = true")


class TakenOver(Exception):
    """This worker's trial was failed as stale and re-queued elsewhere: stop writing its run dir."""


def stop_when(event) -> Callable[[dict], None]:
    """A search callback that stops the search (at an epoch boundary) once `event` is set."""
    def check(record):
        if event is not None and event.is_set():
            raise TakenOver(f"trial taken over by another worker after epoch {record['epoch']}")
    return check


def objective(trial, definition: StudyDefinition, artifact_root: str | Path,
              log=print, taken_over=None, break_lock: bool = False) -> list[float]:
    """Run the trial; record architecture, config, metrics and run dir on it; return its values.

    The trial owns its run directory (`dsara.utils.lock`) while it runs. `taken_over` (a threading.Event
    set by the heartbeat) stops the search when another worker has re-queued this trial, so two
    workers never keep writing the same run directory."""
    origin = retried_number(trial)
    rel = trial_run_dir(trial.study.study_name, trial.number if origin is None else origin)
    run_dir = Path(artifact_root) / rel
    with run_lock(run_dir, break_stale=break_lock):
        return _objective(trial, definition, artifact_root, run_dir, rel, origin, log,
                          taken_over)


def _objective(trial, definition: StudyDefinition, artifact_root: str | Path, run_dir: Path,
               rel: str, origin: int | None, log, taken_over) -> list[float]:
    values = {name: p.suggest(trial) for name, p in definition.params.items()}
    cfg = definition.search_config(values, run_dir)
    trial.set_user_attr("run_dir", rel)
    trial.set_user_attr("config", cfg.to_dict())
    if origin is not None:
        trial.set_user_attr("retry_of", origin)
    files = artifacts.TrialArtifacts(trial, artifacts.store_for(trial.study, artifact_root),
                                     run_dir)
    if origin is not None and not RunDir(run_dir).checkpoint.exists():
        files.restore(origin)  # another machine: the dead attempt's files from the store
    resume = prepare_run_dir(run_dir, retry=origin is not None)
    if resume:
        check_device(cfg, run_dir, definition, trial.number)
    log(f"trial {trial.number}: {'resuming ' + rel if resume else rel}"
        f"{' ' + _fmt(values) if values else ''}")
    callbacks = [stop_when(taken_over), best_effort(files.after_epoch, log),
                 *_pruning_callbacks(trial, definition)]
    result = search_run(cfg, callbacks=callbacks, resume=resume, progress=False,
                        force=definition.resume_on_other_device)
    trial.set_user_attr("resumed_from_epoch", result.resumed_from or 0)
    metrics = {k: v for k, v in result.final.items() if k not in BULKY}
    if definition.objective == "retrain":
        metrics |= retrain(definition, run_dir, log, values)
    else:
        metrics |= {m: result.final[SEARCH_METRIC[m]] for m in SEARCH_METRIC}
    metrics["objective"] = definition.objective
    trial.set_user_attr("architecture", result.architecture.to_dict())
    trial.set_user_attr("metrics", metrics)
    objective_values = [float(metrics[m]) for m in definition.metrics]
    files.finish(objective_values, metrics)
    return objective_values


def prepare_run_dir(run_dir: Path, retry: bool) -> bool:
    """True if the search continues from a checkpoint; a retry without one starts over."""
    rd = RunDir(run_dir)
    if rd.checkpoint.exists():
        return True
    if retry and rd.has_search():  # the dead worker got no epoch done: clear its partial files
        for path in run_dir.iterdir():
            if path.name == LOCK_NAME:  # held by this trial: deleting it would free the lock
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return False


def retrain(definition: StudyDefinition, run_dir: Path, log,
            values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Short adversarial retrain of the searched network (with the trial's retrain.* values, e.g.
    its training method); its last epoch's held-out accuracies."""
    from ..train import run as train_run

    cfg = retrain_config(definition, run_dir / "architecture.json", run_dir / "retrain", values)
    result = train_run(cfg, log=lambda line: log(f"  retrain {line}"))
    last = result.history[-1]
    return {"clean_acc": last["val_clean"], "pgd_acc": last["val_robust"],
            "retrain_epochs": result.epochs_done, "retrain_val_size": cfg.val_size}


def _pruning_callbacks(trial, definition: StudyDefinition):
    """Single-objective supernet studies report every epoch and may be pruned; others cannot
    (Optuna has no pruning for several objectives; a retrain's value is not the supernet's)."""
    if len(definition.metrics) > 1 or definition.objective != "supernet":
        return ()
    import optuna

    key = SEARCH_METRIC[definition.metrics[0]]

    def report(record: dict[str, Any]) -> None:
        trial.report(record[key], step=record["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")
    return (report,)


def _fmt(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items())

