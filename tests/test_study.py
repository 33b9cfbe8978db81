"""Studies on a real SQLite file: create -> run -> status -> export -> build; re-queue and resume
of a dead worker's trial; one clear line for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import optuna
import pytest
import torch

import dsara
from dsara.cli import main
from dsara.search.rundir import RunDir
from dsara.study import definition as defs
from dsara.study import manage, objective, requeue, worker
from dsara.study.storage import Heartbeat, mask_url, open_storage

SMOKE = Path(__file__).resolve().parents[1] / "studies" / "smoke.toml"


def storage_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


def toml_text(table: dict, path: tuple = ()) -> str:
    """A minimal TOML writer for test definitions (tables, scalars, lists)."""
    def key(k):
        return k if k.replace("_", "").isalnum() else json.dumps(k)

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v) if isinstance(v, str) else repr(v)

    scalars = [f"{key(k)} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    text = (f"[{'.'.join(key(p) for p in path)}]\n" if path else "") + "".join(
        line + "\n" for line in scalars)
    for k, v in table.items():
        if isinstance(v, dict):
            text += "\n" + toml_text(v, (*path, k))
    return text


def write_definition(tmp_path: Path, name: str = "def.toml", **edits) -> Path:
    """smoke.toml with edits: ``budget__n_trials=1`` sets [budget] n_trials; None deletes."""
    raw = tomllib.loads(SMOKE.read_text())
    for dotted, v in edits.items():
        *tables, field = dotted.split("__")
        node = raw
        for t in tables:
            node = node.setdefault(t, {})
        if v is None:
            node.pop(field, None)
        else:
            node[field] = v
    path = tmp_path / name
    path.write_text(toml_text(raw))
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_run_status_export_build(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = storage_url(tmp_path)
    common = ("--storage", db)
    code, out, _ = run_cli(capsys, "study", "create", "sm", "--from", "smoke", *common,
                           "--artifact-root", "art")
    assert code == 0 and "created study 'sm'" in out
    code, out, _ = run_cli(capsys, "study", "create", "sm", "--from", str(SMOKE), *common)
    assert code == 0 and "already exists" in out and "same definition" in out

    t0 = time.perf_counter()
    code, out, _ = run_cli(capsys, "study", "run", "sm", *common)
    print(f"3 smoke trials: {time.perf_counter() - t0:.1f} s")
    assert code == 0 and "3 complete" in out and "has its 3 complete trials" in out

    study = optuna.load_study(study_name="sm", storage=db)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert study.metric_names == ["clean_acc", "pgd_acc"]
    assert manage.stored_definition(study)["budget"]["n_trials"] == 3
    assert "definition" not in study.user_attrs  # `optuna studies` prints them in every row
    assert study.user_attrs["artifact_root"] == str((tmp_path / "art").resolve())
    for t in trials:
        assert set(t.params) == {"lam", "stages.2.width"}
        assert 0.05 <= t.params["lam"] <= 0.5
        assert t.user_attrs["run_dir"] == f"sm/trial-{t.number}"  # relative to the root
        run_dir = tmp_path / "art" / t.user_attrs["run_dir"]
        assert (run_dir / "architecture.json").is_file() and len(RunDir(run_dir).read_metrics()) == 2
        assert t.user_attrs["config"]["lam"] == t.params["lam"]
        assert t.user_attrs["config"]["space_overrides"] == {"stages.2.width":
                                                             t.params["stages.2.width"]}
        assert t.values == [t.user_attrs["metrics"]["clean_acc"], t.user_attrs["metrics"]["pgd_acc"]]
        assert "genotype" not in t.user_attrs["metrics"]
        assert t.user_attrs["resumed_from_epoch"] == 0
        assert all(0 <= v <= 1 for v in t.values)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 3  # seeds differ

    code, out, _ = run_cli(capsys, "study", "status", "sm", *common)
    assert code == 0 and "3 complete" in out and "Pareto front" in out and "params.lam" in out

    code, out, _ = run_cli(capsys, "study", "list", *common)
    assert code == 0 and "sm\t3\t3\tclean_acc,pgd_acc\tsmoke.toml" in out

    code, out, _ = run_cli(capsys, "study", "report", "sm", "--format", "csv", *common)
    assert code == 0 and out.splitlines()[0].startswith("number,state,clean_acc,pgd_acc")
    assert len(out.strip().splitlines()) == 4
    code, out, _ = run_cli(capsys, "study", "report", "sm", "--out", "r.md", *common)
    assert code == 0 and "## Pareto front" in (tmp_path / "r.md").read_text()

    for pick in ("clean", "robust", "balanced"):
        code, out, _ = run_cli(capsys, "study", "export", "sm", "--best", "--pick", pick,
                               "--out", f"{pick}.json", *common)
        assert code == 0 and f"-> {pick}.json" in out
    front = {t.number: t.values for t in study.best_trials}
    clean = json.loads((tmp_path / "clean.json").read_text())["provenance"]
    robust = json.loads((tmp_path / "robust.json").read_text())["provenance"]
    assert clean["trial"] in front and robust["trial"] in front
    assert clean["values"]["clean_acc"] == max(v[0] for v in front.values())
    assert robust["values"]["pgd_acc"] == max(v[1] for v in front.values())

    code, out, _ = run_cli(capsys, "study", "export", "sm", "--trial", "1", "--out", "t1.json",
                           *common)
    assert code == 0
    arch = dsara.load_architecture(tmp_path / "t1.json")
    assert arch.provenance["study"] == "sm" and arch.provenance["trial"] == 1
    assert arch.genotype.to_dict() == trials[1].user_attrs["architecture"]["genotype"]
    model = dsara.build_model(tmp_path / "t1.json").eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 8, 8))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()

    code, out, _ = run_cli(capsys, "study", "run", "sm", *common)  # budget met: nothing to do
    assert code == 0 and "0 complete" in out and len(study.get_trials()) == 3

    code, out, _ = run_cli(capsys, "study", "delete", "sm", *common)
    assert code == 0 and "deleted study 'sm'" in out and (tmp_path / "art" / "sm").is_dir()
    assert optuna.get_all_study_names(db) == []


def test_dead_workers_trial_is_requeued_and_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A worker that died after epoch 1 of 2 (its heartbeat stopped, its trial still RUNNING):
    the next worker fails the stale trial, re-queues it, and the retry continues at epoch 1."""
    db = storage_url(tmp_path)
    manage.create("rq", write_definition(tmp_path, budget__n_trials=1), db, tmp_path / "art")
    st = open_storage(db, heartbeat_s=1, grace_s=2)
    opened = manage.open_study("rq", db, st)

    def die_after_first_epoch(trial, definition):
        def callback(record):
            raise RuntimeError("worker died")
        return (callback,)

    with monkeypatch.context() as m:  # the dead worker: claims, beats once, dies mid-trial
        m.setattr(objective, "_pruning_callbacks", die_after_first_epoch)
        trial = worker.claim(opened.study, opened.definition, st)
        with Heartbeat(st, trial._trial_id, 60), pytest.raises(RuntimeError):
            objective.objective(trial, opened.definition, opened.artifact_root, log=lambda s: None)
    assert RunDir(tmp_path / "art" / "rq" / "trial-0").checkpoint.is_file()
    backdate_heartbeat(st, trial._trial_id, hours=1)  # silent for an hour: it is stale, no wait

    summary = worker.run_worker("rq", db, heartbeat_s=1, grace_s=60, log=lambda s: None)
    assert summary.completed == [1] and not summary.failed
    study = optuna.load_study(study_name="rq", storage=db)
    dead, retry = study.get_trials()
    assert (dead.state.name, retry.state.name) == ("FAIL", "COMPLETE")
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["run_dir"] == "rq/trial-0"
    assert retry.user_attrs["resumed_from_epoch"] == 1
    assert retry.params == dead.params
    assert len(RunDir(tmp_path / "art" / "rq" / "trial-0").read_metrics()) == 2


def backdate_heartbeat(storage, trial_id: int, hours: float) -> None:
    """Move a trial's last heartbeat into the past (the database's clock is UTC)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import text

    then = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=hours)
    with storage.engine.begin() as conn:
        conn.execute(text("UPDATE trial_heartbeats SET heartbeat = :t WHERE trial_id = :i"),
                     {"t": then, "i": trial_id})


def test_a_result_whose_trial_was_taken_over_is_stored_on_its_retry(tmp_path, monkeypatch):
    """Heartbeats missed the grace period while the result was on its way: another worker failed
    the trial as stale meanwhile. The result goes to the trial's retry, not lost, not doubled."""
    db = storage_url(tmp_path)
    manage.create("to", write_definition(tmp_path, budget__n_trials=1), db, tmp_path / "art")

    def failed_as_stale_meanwhile(trial, definition, root, log, **kwargs):
        trial.set_user_attr("run_dir", "to/trial-0")
        requeue.backend(trial.study).fail_for_retry(trial._trial_id)  # the other worker's claim
        return [0.5, 0.25]

    monkeypatch.setattr(worker, "objective", failed_as_stale_meanwhile)
    logs = []
    summary = worker.run_worker("to", db, log=logs.append)
    assert summary.completed == [0] and any("stored on its retry, trial 1" in s for s in logs)
    dead, retry = optuna.load_study(study_name="to", storage=db).trials
    assert (dead.state.name, retry.state.name) == ("FAIL", "COMPLETE")
    assert retry.values == [0.5, 0.25] and retry.user_attrs["result_of"] == 0
    assert retry.user_attrs["run_dir"] == "to/trial-0" and retry.params == dead.params


def test_retrain_objective_measures_a_held_out_split(tmp_path):
    retrain = {"epochs": 1, "batch_size": 16, "val_size": 16, "val_steps": 1, "steps": 1,
               "device": "cpu"}
    path = write_definition(tmp_path, objective__kind="retrain", objective__retrain=retrain,
                            budget__n_trials=1)
    db = storage_url(tmp_path)
    manage.create("rt", path, db, tmp_path / "art")
    summary = worker.run_worker("rt", db, log=lambda s: None)
    assert summary.completed == [0]
    t = optuna.load_study(study_name="rt", storage=db).trials[0]
    m = t.user_attrs["metrics"]
    assert m["objective"] == "retrain" and m["retrain_epochs"] == 1 and m["retrain_val_size"] == 16
    assert t.values == [m["clean_acc"], m["pgd_acc"]]
    retrain_dir = tmp_path / "art" / "rt" / "trial-0" / "retrain"
    last = json.loads((retrain_dir / "metrics.json").read_text())["history"][-1]
    assert t.values == [last["val_clean"], last["val_robust"]]  # the held-out split, not test
    assert all(0 <= v <= 1 for v in t.values)


def test_parameter_routing_between_config_and_space(tmp_path):
    d = defs.load_definition(SMOKE)
    cfg = d.search_config({"lam": 0.3, "stages.2.width": 1.5}, tmp_path / "x")
    assert cfg.lam == 0.3 and cfg.space_overrides == {"stages.2.width": 1.5}
    assert cfg.out == str(tmp_path / "x")
    for name in ("smoke", "width_depth", "tradeoff"):  # every shipped definition is valid
        assert defs.load_definition(name).params


def test_mask_url_hides_passwords():
    assert mask_url("postgresql+psycopg://bob:s3cret@db:5432/x") == \
        "postgresql+psycopg://bob:***@db:5432/x"
    assert mask_url("sqlite:///dsara.db") == "sqlite:///dsara.db"


BAD_DEFINITIONS = [
    ({"params__lamx": {"type": "float", "low": 0.1, "high": 0.2}}, "lamx"),
    ({"params__stages.2.widht": {"type": "float", "low": 1.0, "high": 2.0}}, "widht"),
    ({"params__epochs": {"type": "float", "low": 1.5, "high": 2.5}}, "epochs"),
    ({"params__lam__low": 0.5}, "the range is empty"),
    ({"params__lam": {"type": "categorical", "choices": []}}, "choices is empty"),
    ({"params__stages.2.width__high": 1.0}, "the range is empty"),
    ({"params__lam__type": "integer"}, "type is one of float, int, categorical"),
    ({"objective__kind": "accuracy"}, "kind is one of supernet, retrain"),
    ({"objective__retrain": {"epochz": 1}, "objective__kind": "retrain"}, "epochz"),
    ({"objective__retrain": {"epochs": "1"}, "objective__kind": "retrain"}, "epochs must be int"),
]


@pytest.mark.parametrize("edits,needle", BAD_DEFINITIONS)
def test_bad_definition_is_one_clear_line(tmp_path, capsys, edits, needle):
    path = write_definition(tmp_path, "bad.toml", **edits)
    code, out, err = run_cli(capsys, "study", "create", "bad", "--from", str(path),
                             "--storage", storage_url(tmp_path))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err and str(path) in err, err
    assert not (tmp_path / "studies.db").exists()  # nothing created


def test_bad_input_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = storage_url(tmp_path)

    def fails(needle, *argv):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
        assert "Traceback" not in err
        return err

    fails("no study database", "study", "status", "x", "--storage", db)
    manage.create("s", SMOKE, db, tmp_path / "art")
    fails("no study 'nope'", "study", "status", "nope", "--storage", db)
    fails("no study 'nope'", "study", "run", "nope", "--storage", db)
    fails("no study 'nope'", "study", "export", "nope", "--best", "--out", "a.json",
          "--storage", db)
    fails("no complete trial", "study", "export", "s", "--best", "--out", "a.json",
          "--storage", db)
    study = optuna.load_study(study_name="s", storage=db)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    fails("trial 0 of study 's' has no architecture (state FAIL)", "study", "export", "s",
          "--trial", "0", "--out", "a.json", "--storage", db)
    fails("has no trial 7", "study", "export", "s", "--trial", "7", "--out", "a.json",
          "--storage", db)
    other = write_definition(tmp_path, budget__n_trials=5)
    err = fails("already exists", "study", "create", "s", "--from", str(other), "--storage", db)
    assert "different definition" in err and "dsara study delete s" in err
    fails("not found", "study", "create", "t", "--from", "nosuch", "--storage", db)
    err = fails("cannot open storage", "study", "list", "--storage",
                "postgresql+psycopg://bob:s3cret@127.0.0.1:1/nodb")
    assert "s3cret" not in err and "bob:***@" in err
    monkeypatch.setenv("DSARA_STORAGE", "postgresql+psycopg://bob:s3cret@127.0.0.1:1/nodb")
    err = fails("cannot open storage", "study", "status", "s")
    assert "s3cret" not in err
    optuna.create_study(study_name="plain", storage=db)
    fails("has no dsara definition", "study", "run", "plain", "--storage", db)
    fails("grace period must be longer", "study", "run", "s", "--heartbeat", "60", "--grace",
          "30", "--storage", db)


def test_study_names_that_would_escape_the_artifact_root_are_refused(tmp_path, capsys):
    from dsara.cli import main

    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["study", "create", "../escape", "--from", "smoke", "--storage", url]) == 2
    assert "study name '../escape' must be" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_heartbeat_notices_a_taken_over_trial_and_the_search_stops(tmp_path):
    import time

    from dsara.study.objective import TakenOver, stop_when
    from dsara.study.storage import Heartbeat, open_storage

    storage = open_storage(f"sqlite:///{tmp_path}/hb.db", create=True)
    study = optuna.create_study(storage=storage, study_name="hb")
    trial = study.ask()
    with Heartbeat(storage, trial._trial_id, 0.05) as beat:
        time.sleep(0.2)
        assert not beat.taken_over.is_set()  # a live trial keeps beating
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # as a stale-trial check would
        assert beat.taken_over.wait(timeout=60)  # the event, however slow the machine
        with pytest.raises(TakenOver, match="after epoch 3"):
            stop_when(beat.taken_over)({"epoch": 3})
    stop_when(None)({"epoch": 1})  # no event: never stops


def dead_trial_searched_on(tmp_path, monkeypatch, name: str, device_type: str, **edits):
    """A study (budget 1) whose trial 0 died after epoch 1 of 2, its checkpoint marked as
    searched on `device_type`, its heartbeat an hour old."""
    db = storage_url(tmp_path)
    manage.create(name, write_definition(tmp_path, f"{name}.toml", budget__n_trials=1, **edits),
                  db, tmp_path / "art")
    st = open_storage(db, heartbeat_s=1, grace_s=60)
    opened = manage.open_study(name, db, st)

    def die(trial, definition):
        def callback(record):
            raise RuntimeError("worker died")
        return (callback,)

    with monkeypatch.context() as m:
        m.setattr(objective, "_pruning_callbacks", die)
        trial = worker.claim(opened.study, opened.definition, st)
        with Heartbeat(st, trial._trial_id, 60), pytest.raises(RuntimeError):
            objective.objective(trial, opened.definition, opened.artifact_root, log=lambda s: None)
    rd = RunDir(tmp_path / "art" / name / "trial-0")
    state = torch.load(rd.checkpoint, weights_only=True)
    torch.save({**state, "device_type": device_type}, rd.checkpoint)
    backdate_heartbeat(st, trial._trial_id, hours=1)
    return db


def test_a_retry_on_another_device_type_is_refused_and_stays_queued(tmp_path, monkeypatch, capsys):
    db = dead_trial_searched_on(tmp_path, monkeypatch, "dev", "cuda")
    code, _, err = run_cli(capsys, "study", "run", "dev", "--storage", db, "--heartbeat", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "a search made on cuda and this worker runs on cpu" in err
    assert "resume_on_other_device = true" in err
    states = [t.state.name for t in optuna.load_study(study_name="dev", storage=db).trials]
    assert states == ["FAIL", "FAIL", "WAITING"]  # the dead trial, the refused retry, queued again


def test_a_study_may_allow_retries_on_another_device_type(tmp_path, monkeypatch, capsys):
    db = dead_trial_searched_on(tmp_path, monkeypatch, "devok", "cuda",
                                budget__resume_on_other_device=True)
    summary = worker.run_worker("devok", db, heartbeat_s=1, grace_s=60, log=lambda s: None)
    assert summary.completed == [1]
    assert "searched on cuda and would continue on cpu" in capsys.readouterr().err  # the warning


def test_optuna_studies_rows_stay_short_and_old_studies_still_open(tmp_path, capsys):
    """The definition is a system attribute: `optuna studies` prints user attributes in every
    row. A study made before (definition in user_attrs) opens, lists and reports as ever."""
    db = storage_url(tmp_path)
    manage.create("new", SMOKE, db, tmp_path / "art")
    old = optuna.create_study(study_name="old", storage=db, directions=["maximize"] * 2)
    definition = manage.stored_definition(optuna.load_study(study_name="new", storage=db))
    assert definition["budget"]["n_trials"] == 3
    old.set_user_attr("definition", definition)  # the layout of studies made before
    old.set_user_attr("definition_source", "smoke.toml")
    old.set_user_attr("artifact_root", str(tmp_path / "art"))
    assert manage.open_study("old", db).definition.to_dict() == definition
    code, out, _ = run_cli(capsys, "study", "list", "--storage", db)
    assert code == 0 and out.count("clean_acc,pgd_acc\tsmoke.toml") == 2, out
    optuna_cli = Path(sys.executable).with_name("optuna")
    if not optuna_cli.is_file():
        pytest.skip(f"no optuna command beside {sys.executable}")
    rows = subprocess.run([str(optuna_cli), "studies", "--storage", db], capture_output=True,
                          text=True, timeout=120, check=True).stdout.splitlines()
    def text(name: str) -> str:  # the row without the padding of the widest one
        return " ".join(next(r for r in rows if f"| {name} " in r).split())

    assert "definition_sha256" in text("new") and len(text("new")) < 300, text("new")
    assert len(text("old")) > 600  # what the short row replaces (the smoke definition)
