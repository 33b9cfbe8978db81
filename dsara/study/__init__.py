"""Persistent Optuna sweeps over DSARA searches, on one machine or many.

    dsara study create NAME --from smoke     # definition: studies/smoke.toml, stored on the study
    dsara study run NAME                     # a worker; start as many as you like
    dsara study export NAME --best --out arch.json

Modules: `definition` (study TOML), `storage` (RDB storage, heartbeats, claim lock), `objective`
(one trial = one search + objective values), `worker` (the claim-run-tell loop), `manage` (create,
load, delete, export), `report` (trial tables, Pareto front).
"""

from .definition import StudyDefinition, list_definitions, load_definition
from .manage import create, delete, export, open_study
from .storage import DEFAULT_STORAGE, mask_url, open_storage
from .worker import run_worker

__all__ = ["DEFAULT_STORAGE", "StudyDefinition", "create", "delete", "export", "list_definitions",
           "load_definition", "mask_url", "open_storage", "open_study", "run_worker"]
