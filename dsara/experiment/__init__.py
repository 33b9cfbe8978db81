"""Experiments: which architecture source wins at equal parameters, over seeds, on real data.

    dsara experiment create cpu --from cifar10-cpu --data-root DIR
    dsara experiment run cpu          # a worker; start as many as you like
    dsara experiment report cpu       # mean +- std per source, searched minus best random

Modules: `definition` (experiment TOML, sources, units), `unit` (search -> derive -> retrain at the
budget -> evaluate, each phase resumable), `runner` (the Optuna study: claim, run, re-queue),
`report` (tables); the scatter plot and the HTML page are in `dsara.plot.experiment`.
"""

from .definition import Experiment, Source, Unit, list_experiments, load_experiment
from .runner import create, open_experiment, run_worker

__all__ = ["Experiment", "Source", "Unit", "create", "list_experiments", "load_experiment",
           "open_experiment", "run_worker"]
