"""Studies against a PostgreSQL server of the tests' own (`pgserver`, a password-protected role):

- a worker survives a restart of the server: stopped in the middle of a trial and started again
  once the worker has noticed, the trial keeps going, its heartbeats, final attributes and tell are
  retried, and the study ends with its budget of complete trials, none lost, none run twice;
- chaos: several workers on one study of many tiny trials, SIGKILLed at random moments and
  replaced, and one server restart among them; the study ends with exactly its budget of complete
  trials, none RUNNING or WAITING, each with its run directory and architecture file, and the
  password in no log and no file.

Both are slow (a server, worker processes); `.ci/run` runs them (DSARA_REQUIRE_POSTGRES=1).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from pgserver import Server, why_not
from test_study import write_definition

from dsara.arch.archfile import load_architecture
from dsara.search.rundir import RunDir
from dsara.study import manage
from dsara.study.storage import open_storage

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(3600)]
ROOT = Path(__file__).resolve().parents[1]
HANG_S = 1800  # waits for an event fail after this long: they bound a hang, not a speed

_WHY = why_not()
if _WHY and os.environ.get("DSARA_REQUIRE_POSTGRES") == "1":
    raise RuntimeError(f"DSARA_REQUIRE_POSTGRES=1 but {_WHY}")
if _WHY:
    pytest.skip(_WHY, allow_module_level=True)


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


def worker(name: str, url: str, log: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "dsara", "study", "run", name, "--storage", url,
                             *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            cwd=log.parent)


def wait_for(condition, proc: subprocess.Popen, log: Path, what: str, limit: float = HANG_S):
    """Poll `condition` (an event in the worker's files), failing if the worker dies first."""
    deadline = time.monotonic() + limit
    while not condition():
        assert proc.poll() is None, f"worker exited before {what}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {what} within {limit} s:\n{log.read_text()}"
        time.sleep(0.05)


def epoch_of(rd: RunDir) -> int:
    try:
        return torch.load(rd.checkpoint, weights_only=True)["epoch"]
    except Exception:  # not there yet, or being replaced right now
        return 0


def test_a_worker_survives_a_database_restart_mid_trial(tmp_path, server):
    epochs = 2
    path = write_definition(tmp_path, search__epochs=epochs, search__stage1_epochs=1,
                            search__max_steps=1, budget__n_trials=2)
    manage.create("restart", path, server.url, tmp_path / "art")
    log = tmp_path / "worker.log"
    # grace 60 s: a slow, loaded machine never has this live trial taken for a dead one
    proc = worker("restart", server.url, log, "--heartbeat", "1", "--grace", "60",
                  "--db-retry", "120")
    rd = RunDir(tmp_path / "art" / "restart" / "trial-0")
    try:
        wait_for(lambda: epoch_of(rd) >= 1, proc, log, "first checkpoint of trial 0")
        server.stop()  # mid-trial: every connection cut
        # the search runs on without the database, then its bookkeeping waits for it
        wait_for(lambda: epoch_of(rd) == epochs, proc, log, "the end of trial 0's search")
        wait_for(lambda: "database unreachable" in log.read_text(), proc, log, "a retry")
        server.start()
        assert proc.wait(timeout=HANG_S) == 0, log.read_text()
    finally:
        proc.kill()
        if server_down(server):
            server.start()
    text = log.read_text()
    assert "database reachable again" in text, text
    assert server.password not in text
    study = optuna.load_study(study_name="restart", storage=server.url)
    trials = study.get_trials()
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE")], text
    first = trials[0]
    assert "retry_of" not in first.user_attrs and first.user_attrs["resumed_from_epoch"] == 0
    assert first.user_attrs["metrics"]["epoch"] == epochs
    assert [r["epoch"] for r in rd.read_metrics()] == list(range(1, epochs + 1))  # each once
    assert text.count("trial 0 complete") == 1 and text.count("trial 1 complete") == 1


def server_down(server: Server) -> bool:
    import psycopg

    try:
        psycopg.connect(server.dsn(), connect_timeout=2).close()
    except psycopg.OperationalError:
        return True
    return False


def test_chaos_sigkilled_workers_and_a_restart_end_with_exactly_the_budget(tmp_path, server):
    budget, n_workers, kills = 6, 3, 5
    path = write_definition(tmp_path, search__epochs=2, search__stage1_epochs=1,
                            search__max_steps=1, budget__n_trials=budget, budget__max_retry=3)
    manage.create("chaos", path, server.url, tmp_path / "art")
    beat = ("--heartbeat", "1", "--grace", "4", "--db-retry", "60")
    logs, procs = [], []

    def start():
        logs.append(tmp_path / f"w{len(logs)}.log")
        procs.append(worker("chaos", server.url, logs[-1], *beat))

    # the test's own reads outlive the restart too
    study = optuna.load_study(study_name="chaos", storage=open_storage(server.url, retry_s=60))

    def complete() -> int:
        return sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))

    rng, kill_until = random.Random(17), time.monotonic() + 300  # then no more kills
    deadline = time.monotonic() + HANG_S
    for _ in range(n_workers):
        start()
    try:
        killed = 0
        while killed < kills and complete() < budget - 1 and time.monotonic() < kill_until:
            time.sleep(rng.uniform(0.3, 2.0))  # a random moment: claiming, searching, telling
            if killed == kills // 2:
                server.stop()  # and once, the database goes away under everyone
                server.start()
            busy = [i for i, p in enumerate(procs) if p.poll() is None and "trial " in
                    logs[i].read_text()]  # at work (not still importing torch)
            if busy:
                procs[rng.choice(busy)].send_signal(signal.SIGKILL)
                killed += 1
                start()  # its replacement
        while complete() < budget or any(p.poll() is None for p in procs):
            assert time.monotonic() < deadline, diagnosis(study, procs, logs)
            if all(p.poll() is not None for p in procs):  # e.g. stopped after failures
                start()
            time.sleep(0.2)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    trials = study.get_trials()
    assert complete() == budget and states(study) <= {"COMPLETE", "FAIL"}, states(study)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len({t.user_attrs["run_dir"] for t in done}) == budget  # none counted twice
    for t in done:
        rd = RunDir(tmp_path / "art" / t.user_attrs["run_dir"])
        assert load_architecture(rd.architecture).genotype  # its architecture file, valid
        assert [r["epoch"] for r in rd.read_metrics()] == [1, 2]  # each epoch logged once
    texts = [log.read_text() for log in logs]
    texts += [p.read_text(errors="replace") for p in (tmp_path / "art").rglob("*")
              if p.is_file() and p.suffix != ".pt"]
    assert not [t for t in texts if server.password in t]
    print(f"chaos: {killed} workers SIGKILLed, {len(procs)} started, {len(trials)} trials for "
          f"{budget} complete")


def diagnosis(study, procs, logs) -> str:
    trials = [(t.number, t.state.name, t.user_attrs.get("error")) for t in study.get_trials()]
    tails = [f"w{i} ({p.poll()}): {' | '.join(log.read_text().splitlines()[-3:])}"
             for i, (p, log) in enumerate(zip(procs, logs))]
    return "chaos study unfinished:\n" + "\n".join(map(str, trials + tails))


def states(study) -> set[str]:
    return {t.state.name for t in study.get_trials(deepcopy=False)}
