"""optuna-dashboard, for real: started on a smoke study (loopback, a free port), its JSON API shows
the study, its objective names and each trial's files, and serves those files' content.

Skipped, saying why, without optuna-dashboard, unless DSARA_REQUIRE_DASHBOARD=1 (CI)."""

from __future__ import annotations

import importlib.util
import os

import pytest
from test_study import storage_url, write_definition  # tests/ is on sys.path

from dsara.study import dashboard, manage, worker
from dsara.study.artifacts import RESULT, SYNCED

if importlib.util.find_spec("optuna_dashboard") is None:
    if os.environ.get("DSARA_REQUIRE_DASHBOARD") == "1":
        raise RuntimeError("DSARA_REQUIRE_DASHBOARD=1 but optuna-dashboard is not installed")
    pytest.skip(f"optuna-dashboard is not installed ({dashboard.INSTALL})",
                allow_module_level=True)


def test_the_dashboard_lists_a_dsara_study_and_its_trials_files(tmp_path):
    db = storage_url(tmp_path)
    manage.create("dash", write_definition(tmp_path, budget__n_trials=2), db, tmp_path / "art")
    assert worker.run_worker("dash", db, log=lambda s: None).completed == [0, 1]
    with dashboard.serve(db, tmp_path / "art" / "dash" / "artifacts") as base:
        studies = dashboard.get_json(f"{base}/api/studies")["study_summaries"]
        (summary,) = [s for s in studies if s["study_name"] == "dash"]
        study = dashboard.get_json(f"{base}/api/studies/{summary['study_id']}?after=0")
        assert study["objective_names"] == ["clean_acc", "pgd_acc"]
        assert len(study["directions"]) == 2 and len(study["trials"]) == 2
        for trial in study["trials"]:
            names = sorted(a["filename"] for a in trial["artifacts"])
            assert names == sorted([*SYNCED, RESULT])
            arch = next(a for a in trial["artifacts"] if a["filename"] == "architecture.json")
            body = dashboard.get(f"{base}/artifacts/{summary['study_id']}/{trial['trial_id']}/"
                                 f"{arch['artifact_id']}")
            run_dir = tmp_path / "art" / "dash" / f"trial-{trial['number']}"
            assert body == (run_dir / "architecture.json").read_bytes()
            assert {p["name"] for p in trial["params"]} == {"lam", "stages.2.width"}

    # `dsara study dashboard` serves the same study with its own artifact store: no flags needed
    with dashboard.serve(db, study="dash") as base:
        trial = dashboard.get_json(f"{base}/api/studies/{summary['study_id']}?after=0")["trials"][1]
        ckpt = next(a for a in trial["artifacts"] if a["filename"] == "checkpoint.pt")
        body = dashboard.get(f"{base}/artifacts/{summary['study_id']}/{trial['trial_id']}/"
                             f"{ckpt['artifact_id']}")
        assert body == (tmp_path / "art" / "dash" / "trial-1" / "checkpoint.pt").read_bytes()
