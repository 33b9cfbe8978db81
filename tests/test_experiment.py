"""Experiments: definitions, units, the result table, and a 2-source x 2-seed run on synthetic data
that is killed mid-unit and resumed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsara.errors import DsaraError
from dsara.experiment import runner
from dsara.experiment.definition import (
    Unit,
    experiment_from_dict,
    find_experiment,
    list_experiments,
    load_experiment,
)
from dsara.experiment.report import report_markdown, results, source_table, versus_random
from dsara.experiment.unit import eval_subset, run_unit
from dsara.utils.config import read_toml

ROOT = Path(__file__).resolve().parents[1]


def smoke_raw() -> dict:
    return read_toml(find_experiment("smoke"))


def test_shipped_experiments_parse():
    assert {"smoke", "cifar10-cpu", "cifar10-gpu"} <= set(list_experiments())
    for name in list_experiments():
        exp = load_experiment(name)
        assert exp.units() and "data_root" not in exp.data  # never a hard-coded folder


def test_units_cover_sources_seeds_and_random_cells():
    raw = smoke_raw()
    raw["sources"]["random"]["count"] = 3
    raw["sources"]["ARNAS"] = {"kind": "published", "cell": "ARNAS", "seeds": [5]}
    exp = experiment_from_dict(raw)
    keys = [u.key for u in exp.units()]
    assert sorted(keys) == sorted(["dsara/s0", "dsara/s1", "ARNAS/s5",
                                   *(f"random/s{s}/c{i}" for s in (0, 1) for i in range(3))])
    assert keys[:4] == ["dsara/s0", "random/s0/c0", "ARNAS/s5", "dsara/s1"]  # round-robin
    assert all(Unit.from_key(k).key == k for k in keys)
    assert len({u.dir_name for u in exp.units()}) == len(keys)


def test_each_search_kind_changes_the_search_as_its_name_says():
    raw = smoke_raw()
    raw["sources"] = {k: {"kind": k} for k in ("dsara", "dsara-stage1", "dsara-mo", "darts")}
    exp = experiment_from_dict(raw)
    cfgs = {k: exp.search_config(s, 3, "x", None) for k, s in exp.sources.items()}
    epochs = raw["search"]["epochs"]
    assert [cfgs[k].stage1 for k in cfgs] == [raw["search"]["stage1_epochs"], epochs, 0, epochs]
    assert cfgs["darts"].pgd_steps == 0 and cfgs["dsara"].pgd_steps == raw["search"]["pgd_steps"]
    assert {c.seed for c in cfgs.values()} == {3}


@pytest.mark.parametrize("change, message", [
    (lambda r: r["sources"]["dsara"].update(kind="nas"), "kind is one of"),
    (lambda r: r["sources"].update(ARNAS={"kind": "published"}), "needs cell"),
    (lambda r: r["search"].update(out="x"), "set per unit"),
    (lambda r: r["retrain"].update(data_root="/data"), "set per unit"),
    (lambda r: r["sources"].update({"a/b": {"kind": "random"}}), "folder names"),
    (lambda r: r["evaluate"].update(attacks=["clean", "autoattack"]), "autoattack_n"),
    (lambda r: r["retrain"].update(epoch=3), "unknown key 'epoch'"),
    (lambda r: r["search"].update(lam="high"), "wrong type"),
    (lambda r: r.update(seeds=[0, 0]), "distinct integers"),
    (lambda r: r["sources"].update(x={"kind": "published", "cell": "NOPE"}), "unknown built-in"),
])
def test_bad_definitions_fail_at_create(change, message):
    raw = smoke_raw()
    change(raw)
    with pytest.raises(DsaraError, match=message):
        experiment_from_dict(raw)


def _row(source, kind, seed, clean, pgd, index=None):
    return {"unit": f"{source}/s{seed}" + ("" if index is None else f"/c{index}"),
            "source": source, "kind": kind, "seed": seed, "index": index,
            "accuracy": {"clean": clean, "pgd20": pgd}, "params": 1000, "device": "cpu",
            "seconds": {"search": 1800.0, "train": 1800.0, "evaluate": 0.0}, "search": {}}


def test_table_and_searched_minus_best_random_by_hand():
    rows = [_row("dsara", "dsara", 0, 0.50, 0.30), _row("dsara", "dsara", 1, 0.60, 0.20),
            _row("random", "random", 0, 0.40, 0.25, 0), _row("random", "random", 0, 0.55, 0.10, 1)]
    table = source_table(rows, ["dsara", "random"]).set_index("source")
    assert table.loc["dsara", "clean %"] == "55.0 ± 7.1"  # mean 0.55, sample std 0.0707
    assert table.loc["dsara", "PGD-20 %"] == "25.0 ± 7.1"
    assert table.loc["random", "runs"] == 2 and table.loc["dsara", "CPU wall h / run"] == "1.000 ± 0.000"
    vs = versus_random(rows).set_index("source")
    # best random: clean 0.55, PGD 0.25 -> dsara deltas clean (-5, +5), PGD (+5, -5)
    assert vs.loc["dsara", "Δ clean (pp)"] == "0.0 ± 7.1"
    assert vs.loc["dsara", "Δ PGD-20 (pp)"] == "0.0 ± 7.1"
    assert vs.loc["dsara", "beats % of random (PGD-20)"] == "75 ± 35"  # 2 of 2, 1 of 2
    rows[2]["accuracy"]["pgd20"] = 0.35  # a stronger best random must lower the delta
    assert versus_random(rows).set_index("source").loc["dsara", "Δ PGD-20 (pp)"] == "-10.0 ± 7.1"


def test_test_subset_is_stratified_and_fixed():
    from dsara.data.datasets import SyntheticConfig, make_synthetic

    _, test = make_synthetic(SyntheticConfig(n_train=20, n_test=200, image_size=8))
    (a, record), (b, _) = eval_subset(test, 50, 0), eval_subset(test, 50, 0)
    assert len(a) == 50 and (a.labels == b.labels).all() and (a.images == b.images).all()
    counts = a.labels.bincount(minlength=10)
    assert counts.min() >= 4 and counts.max() <= 6  # every class, not the first few
    assert record["selection"] == "class-stratified" and len(record["indices"]) == 50
    assert not (eval_subset(test, 50, 1)[0].images == a.images).all()


def test_published_and_baseline_units_at_the_budget(tmp_path):
    raw = smoke_raw()
    raw["params"] = "40k"
    raw["sources"] = {"DARTS_V2": {"kind": "published", "cell": "DARTS_V2", "seeds": [0]},
                      "resnet": {"kind": "baseline", "model": "resnet_tiny", "seeds": [0]}}
    raw["retrain"]["epochs"] = 1
    exp = experiment_from_dict(raw)
    out = [run_unit(exp, u, tmp_path / u.dir_name, None, lambda line: None)
           for u in exp.units()]
    for r in out:
        assert abs(r["params"] - 40_000) / 40_000 < 0.15 and r["n_test"] == 40
        assert set(r["accuracy"]) == {"clean", "pgd20", "cw"}
        assert r["accuracy"]["pgd20"] <= r["accuracy"]["clean"]
    assert out[0]["arch"] == "DARTS_V2" and out[1]["arch"] == "resnet_tiny"


def _wait_for(predicate, timeout: float, proc):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the worker ended before the event"
        assert time.monotonic() < deadline, "the event did not happen in time"
        time.sleep(0.05)


@pytest.mark.slow  # ~30 s on an idle 2-core machine: a subprocess worker, 4 units, a restart
def test_two_sources_two_seeds_run_resume_after_a_kill_and_give_the_table(tmp_path):
    storage = f"sqlite:///{tmp_path / 'exp.db'}"
    runner.create("smoke", "smoke", storage, tmp_path / "runs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "dsara", "experiment", "run", "smoke", "--storage", storage,
         "--heartbeat", "1", "--grace", "3"], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "runs" / "smoke" / "dsara" / "seed-0" / "train"
    try:  # the event: the first unit's retrain has finished an epoch (its search is done)
        _wait_for(lambda: (first / "metrics.json").is_file(), 300, worker)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    opened = runner.open_experiment("smoke", storage)
    assert runner.unit_states(opened.study, opened.experiment)["dsara/s0"] == "RUNNING"

    summary = runner.run_worker("smoke", storage, heartbeat_s=1, grace_s=3, log=lambda s: None)
    assert sorted(summary.completed) == ["dsara/s0", "dsara/s1", "random/s0/c0", "random/s1/c0"]
    study = runner.open_experiment("smoke", storage).study
    rows = {r["unit"]: r for r in results(study)}
    assert rows["dsara/s0"]["resumed_train_epoch"] >= 1  # continued, not started over
    retried = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") is not None]
    assert [t.params["unit"] for t in retried] == ["dsara/s0"]
    import json

    history = json.loads((first / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    text = report_markdown("smoke", opened.experiment, list(rows.values()),
                           runner.unit_states(study, opened.experiment))
    assert "Units: 4 of 4 complete" in text and "| dsara  | dsara  | 2    |" in text
    assert "Searched minus best random" in text and "Search diagnostics" in text
    # a second worker finds nothing to do; the same definition again is a no-op
    assert runner.run_worker("smoke", storage, log=lambda s: None).completed == []
    assert runner.create("smoke", "smoke", storage)[1] is False


def test_the_definition_is_a_system_attr_and_an_older_experiment_still_opens(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'exp.db'}"
    study, created = runner.create("e", "smoke", storage, tmp_path)
    assert created and "experiment" not in study.user_attrs  # user attrs stay short
    assert runner.stored_experiment(study) == load_experiment("smoke").raw
    # an experiment created before the change kept its TOML in a user attr
    old = optuna.create_study(study_name="old", storage=storage)
    for key in ("experiment_sha256", "artifact_root", "data_root"):
        old.set_user_attr(key, study.user_attrs[key])
    old.set_user_attr("experiment", load_experiment("smoke").raw)
    assert runner.open_experiment("old", storage).experiment.raw == load_experiment("smoke").raw


def test_an_interrupted_worker_says_which_command_resumes_the_unit(tmp_path, monkeypatch):
    from dsara.errors import Interrupted

    storage = f"sqlite:///{tmp_path / 'exp.db'}"
    runner.create("e", "smoke", storage, tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "unit_objective", interrupted)
    with pytest.raises(Interrupted, match="the next `dsara experiment run` resumes it"):
        runner.run_worker("e", storage, log=lambda s: None)


def test_another_definition_under_the_same_name_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'exp.db'}"
    runner.create("e", "smoke", storage, tmp_path)
    other = tmp_path / "other.toml"
    text = find_experiment("smoke").read_text().replace("seeds = [0, 1]", "seeds = [7]")
    other.write_text(text)
    with pytest.raises(DsaraError, match="another definition"):
        runner.create("e", other, storage)


def test_cli_status_and_report(tmp_path, capsys):
    from dsara.cli import main

    storage = f"sqlite:///{tmp_path / 'exp.db'}"
    assert main(["experiment", "create", "s", "--from", "smoke", "--storage", storage,
                 "--artifact-root", str(tmp_path / "runs")]) == 0
    assert main(["experiment", "status", "s", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "PENDING   dsara/s0" in out and "0 of 4 units complete" in out
    assert main(["experiment", "report", "s", "--storage", storage, "--format", "html",
                 "--out", str(tmp_path / "r.html")]) == 0
    assert "<h1>Experiment s</h1>" in (tmp_path / "r.html").read_text()
    assert main(["experiment", "run", "nope", "--storage", storage]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err


def test_a_source_reusing_a_search_derives_its_alpha_again_with_the_skip_cap(tmp_path):
    """P-DARTS' cap as an experiment source: the same finished search, cells derived again."""
    import json

    raw = smoke_raw()
    raw["sources"] = {"dsara": {"kind": "dsara", "seeds": [0]},
                      "capped": {"kind": "dsara", "reuse": "dsara", "seeds": [0],
                                 "search": {"skip_cap": 0}}}
    raw["retrain"]["epochs"] = 1
    exp = experiment_from_dict(raw)
    unit_capped = exp.units()[1]
    with pytest.raises(RuntimeError, match="has not finished yet"):  # its search comes first
        run_unit(exp, unit_capped, tmp_path / unit_capped.dir_name, None, lambda line: None)
    out = [run_unit(exp, u, tmp_path / u.dir_name, None, lambda line: None)
           for u in exp.units()]
    capped = json.loads((tmp_path / "capped/seed-0/architecture.json").read_text())
    for cell_type in ("accurate", "robust"):
        assert all(op != "skip_connect" for op, _ in capped["genotype"][cell_type]["edges"])
    assert capped["provenance"]["rederived"]["skip_cap"] == 0
    assert out[1]["search"]["alpha_shift"] == out[0]["search"]["alpha_shift"]  # the same alpha
    assert not (tmp_path / "capped/seed-0/search").exists()  # no second search


def test_a_source_reusing_a_search_can_choose_its_cells_by_perturbation(tmp_path):
    """DARTS-PT's selection (reconstruction) as a source: the searched supernet, no new search."""
    import json

    raw = smoke_raw()
    raw["sources"] = {"dsara": {"kind": "dsara", "seeds": [0]},
                      "pt": {"kind": "dsara", "reuse": "dsara", "seeds": [0],
                             "search": {"selection": "pt", "pt_images": 16}}}
    raw["retrain"]["epochs"] = 1
    exp = experiment_from_dict(raw)
    out = [run_unit(exp, u, tmp_path / u.dir_name, None, lambda line: None)
           for u in exp.units()]
    arch = json.loads((tmp_path / "pt/seed-0/architecture.json").read_text())
    record = json.loads((tmp_path / "pt/seed-0/pt_selection.json").read_text())
    assert arch["provenance"]["rederived"]["selection"] == "pt"
    assert record["images"] == 16 and record["evaluations"] > 1
    chosen = {k: v["op"] for k, v in record["ops"].items()}
    kept = record["edges"]["accurate/node0"]["kept"]
    assert [tuple(e) for e in arch["genotype"]["accurate"]["edges"][:2]] == \
        [(chosen[f"accurate/{j}"], j) for j in kept]
    assert out[1]["search"]["alpha_shift"] == out[0]["search"]["alpha_shift"]  # the same search
    assert out[1]["seconds"]["search"] > 0  # the selection's own time
    assert not (tmp_path / "pt/seed-0/search").exists()


@pytest.mark.parametrize("change, says", [
    ({"reuse": "nope"}, "must name a source that searches"),
    ({"reuse": "dsara", "search": {"epochs": 3}}, "only derives again"),
    ({"reuse": "dsara", "kind": "darts"}, "the same kind"),
])
def test_reuse_is_checked_at_create(change, says):
    raw = smoke_raw()
    raw["sources"]["capped"] = {"kind": "dsara", **change}
    with pytest.raises(DsaraError, match=says):
        experiment_from_dict(raw)


def test_a_reusing_unit_is_claimed_only_after_the_unit_it_reuses_is_complete():
    raw = smoke_raw()
    raw["sources"]["capped"] = {"kind": "dsara", "reuse": "dsara", "search": {"skip_cap": 2}}
    exp = experiment_from_dict(raw)
    states = {u.key: "PENDING" for u in exp.units()}
    assert runner.ready(exp, "dsara/s0", states) and runner.ready(exp, "random/s0/c0", states)
    for before in ("PENDING", "RUNNING", "FAIL"):
        assert not runner.ready(exp, "capped/s0", states | {"dsara/s0": before})
    assert runner.ready(exp, "capped/s0", states | {"dsara/s0": "COMPLETE"})
    assert not runner.ready(exp, "capped/s1", states | {"dsara/s0": "COMPLETE"})
