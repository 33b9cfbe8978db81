"""Studies on the real PostgreSQL server (127.0.0.1:5432): several worker processes share one
study through the database; a worker killed with SIGKILL has its trial failed, re-queued and resumed.

The module creates its own database and drops it at the end. Without a server the tests are
skipped, unless DSARA_REQUIRE_POSTGRES=1, where they fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from test_study import write_definition  # tests/ is on sys.path (rootdir-relative imports)

from dsara.search.rundir import RunDir
from dsara.study import manage

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(3600)]
HANG_S = 1800  # waits for an event fail after this long: they bound a hang, not a speed

HOST, PORT, USER = "127.0.0.1", 5432, os.environ.get("DSARA_PG_USER", "postgres")
ROOT = Path(__file__).resolve().parents[1]


def _server_answers() -> str | None:
    """None if the server answers, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'dsara[postgres]')"
    try:
        psycopg.connect(host=HOST, port=PORT, user=USER, dbname="postgres",
                        connect_timeout=3).close()
    except Exception as e:
        return f"no PostgreSQL server answers at {HOST}:{PORT} as {USER} ({type(e).__name__})"
    return None


_WHY = _server_answers()
if _WHY and os.environ.get("DSARA_REQUIRE_POSTGRES") == "1":
    raise RuntimeError(f"DSARA_REQUIRE_POSTGRES=1 but {_WHY}")
if _WHY:
    pytest.skip(_WHY, allow_module_level=True)


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(host=HOST, port=PORT, user=USER, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="module")
def pg_url():
    name = f"dsara_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{name}"
    finally:
        _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' "
               "AND pid <> pg_backend_pid()")
        _admin(f'DROP DATABASE IF EXISTS "{name}"')


def worker(name: str, url: str, log: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "dsara", "study", "run", name, "--storage", url,
                             *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            cwd=log.parent)


def test_three_workers_finish_exactly_the_budget(tmp_path, pg_url):
    budget = 5
    path = write_definition(tmp_path, search__epochs=1, search__stage1_epochs=0,
                            search__max_steps=1, budget__n_trials=budget)
    manage.create("par", path, pg_url, tmp_path / "art")
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    procs = [worker("par", pg_url, log, "--heartbeat", "1") for log in logs]
    codes = [p.wait(timeout=HANG_S) for p in procs]
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0, 0], outputs
    study = optuna.load_study(study_name="par", storage=pg_url)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * budget  # none extra, none failed
    assert sorted(t.number for t in trials) == list(range(budget))
    done = [line.split()[1] for out in outputs for line in out.splitlines()
            if line.startswith("trial ") and " complete: " in line]
    assert sorted(int(n) for n in done) == list(range(budget))  # each trial ran exactly once
    assert len({t.user_attrs["run_dir"] for t in trials}) == budget
    for t in trials:
        assert (tmp_path / "art" / t.user_attrs["run_dir"] / "architecture.json").is_file()
    print("trials per worker:", [out.count(" complete: ") for out in outputs])


def test_sigkilled_workers_trial_is_requeued_and_resumes(tmp_path, pg_url):
    path = write_definition(tmp_path, search__epochs=4, search__stage1_epochs=1,
                            search__max_steps=2, budget__n_trials=1)
    manage.create("kill", path, pg_url, tmp_path / "art")
    run_dir = RunDir(tmp_path / "art" / "kill" / "trial-0")
    beat = ("--heartbeat", "1", "--grace", "3")
    first = worker("kill", pg_url, tmp_path / "w1.log", *beat)
    deadline = time.monotonic() + HANG_S
    while not run_dir.checkpoint.exists():
        assert first.poll() is None, (tmp_path / "w1.log").read_text()
        assert time.monotonic() < deadline, f"no checkpoint within {HANG_S} s"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)  # mid-trial: epoch 1 of 4 is checkpointed
    first.wait()
    epoch = torch.load(run_dir.checkpoint, weights_only=True)["epoch"]
    assert 1 <= epoch < 4
    study = optuna.load_study(study_name="kill", storage=pg_url)
    assert [t.state.name for t in study.get_trials()] == ["RUNNING"]  # nobody told the DB

    second = worker("kill", pg_url, tmp_path / "w2.log", *beat)
    assert second.wait(timeout=HANG_S) == 0, (tmp_path / "w2.log").read_text()
    dead, retry = study.get_trials()
    assert (dead.state.name, retry.state.name) == ("FAIL", "COMPLETE")
    assert retry.user_attrs["retry_of"] == 0 and retry.params == dead.params
    assert retry.user_attrs["run_dir"] == "kill/trial-0"
    assert retry.user_attrs["resumed_from_epoch"] == epoch  # not from scratch
    assert [r["epoch"] for r in run_dir.read_metrics()] == [1, 2, 3, 4]
