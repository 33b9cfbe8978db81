"""What the flat-layout dsara (commit 49fa2ff, before the package redesign) wrote still loads and
resumes: an interrupted search, a trained run's checkpoints, a study with two of its three trials
(tests/data/layout-v0, made by its make.py with that commit's code)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from dsara.cli import main

OLD = Path(__file__).parent / "data" / "layout-v0"


@pytest.fixture
def old(tmp_path) -> Path:
    shutil.copytree(OLD, tmp_path / "v0")
    return tmp_path / "v0"


def test_an_old_interrupted_search_resumes_to_its_end(old):
    assert len((old / "search" / "metrics.jsonl").read_text().splitlines()) == 1  # 1 of 2 epochs
    assert main(["search", "--resume", str(old / "search")]) == 0
    records = [json.loads(line) for line in
               (old / "search" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and [r["stage"] for r in records] == [1, 2]
    arch = json.loads((old / "search" / "architecture.json").read_text())
    assert arch["genotype"] == records[-1]["genotype"]


def test_an_old_trained_run_loads_and_evaluates(old, capsys):
    from dsara.train.checkpoint import load_trained

    model, meta, path = load_trained(old / "train")
    assert path.name == "best.pt" and sum(p.numel() for p in model.parameters()) > 0
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 3, 8, 8)).shape == (2, 10)
    assert main(["evaluate", str(old / "train"), "--attacks", "clean,pgd20", "--eps", "8/255",
                 "--device", "cpu"]) == 0
    assert "pgd20" in capsys.readouterr().out


def test_an_old_study_reports_and_runs_its_last_trial(old, capsys):
    storage = f"sqlite:///{old / 'study.db'}"
    assert main(["study", "status", "smoke", "--storage", storage]) == 0
    assert "2 complete" in capsys.readouterr().out
    assert main(["study", "run", "smoke", "--storage", storage,
                 "--artifact-root", str(old / "studies")]) == 0
    import optuna

    study = optuna.load_study(study_name="smoke", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3  # the stored [budget] n_trials
    assert main(["study", "export", "smoke", "--storage", storage, "--best", "--pick",
                 "balanced", "--out", str(old / "best.json")]) == 0
    assert json.loads((old / "best.json").read_text())["genotype"]
