"""Trial files in Optuna's artifact store: a filesystem store beside the run directories, and an S3
store on a real local S3 server (moto in server mode), through which a worker on a "second
machine" (its own run-directory folder, nothing shared but the database and the bucket) resumes
the trial of a SIGKILLed worker from its checkpoint.

Without moto's server the S3 test is skipped, saying why, unless DSARA_REQUIRE_S3=1 (CI), where it
fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.artifacts import download_artifact, get_all_artifact_meta
from test_study import storage_url, write_definition  # tests/ is on sys.path

from dsara.search.rundir import RunDir
from dsara.study import artifacts, manage, worker
from dsara.study.artifacts import RESULT, SYNCED

ROOT = Path(__file__).resolve().parents[1]
HANG_S = 1800  # waits for an event fail after this long: they bound a hang, not a speed


def test_each_trial_lists_its_files_once_in_the_filesystem_store(tmp_path):
    db = storage_url(tmp_path)
    manage.create("fs", write_definition(tmp_path, budget__n_trials=1), db, tmp_path / "art")
    assert worker.run_worker("fs", db, log=lambda s: None).completed == [0]
    study = optuna.load_study(study_name="fs", storage=db)
    trial = study.trials[0]
    metas = get_all_artifact_meta(trial, storage=study._storage)
    assert sorted(m.filename for m in metas) == sorted([*SYNCED, RESULT])  # each once, 2 epochs
    assert trial.user_attrs["artifacts"] == {m.filename: m.artifact_id for m in metas}
    assert trial.user_attrs["artifact_epoch"] == 2
    store = artifacts.store_for(study, tmp_path / "art")
    assert (tmp_path / "art" / "fs" / "artifacts").is_dir()
    run_dir = tmp_path / "art" / "fs" / "trial-0"
    for meta in metas:  # the store holds the final content of every file
        copy = tmp_path / f"copy-{meta.filename}"
        download_artifact(artifact_store=store, file_path=str(copy), artifact_id=meta.artifact_id)
        assert copy.read_bytes() == (run_dir / meta.filename).read_bytes()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 2


# ----------------------------------------------------------------------------- S3 (moto server)

def _moto():
    """(server, endpoint URL), or (None, why not)."""
    try:
        import boto3  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        return None, f"moto[server] and boto3 are needed ({e.name} missing): pip install '.[dev]'"
    try:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
    except Exception as e:
        return None, f"moto's S3 server did not start: {type(e).__name__}: {e}"
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


@pytest.fixture(scope="module")
def s3_env():
    server, endpoint = _moto()
    if server is None:
        if os.environ.get("DSARA_REQUIRE_S3") == "1":
            raise RuntimeError(f"DSARA_REQUIRE_S3=1 but {endpoint}")
        pytest.skip(endpoint)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket="dsara-test")
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _worker(name: str, db: str, cwd: Path, env: dict, *args: str) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    full = {**os.environ, **env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = (cwd / "worker.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "dsara", "study", "run", name, "--storage", db,
                             "--artifact-root", str(cwd / "runs"), "--heartbeat", "1",
                             "--grace", "3", *args], stdout=log, stderr=subprocess.STDOUT,
                            env=full, cwd=cwd)


@pytest.mark.slow  # three Python processes and a heartbeat grace period: about a minute
@pytest.mark.timeout(2 * HANG_S)
def test_a_second_machine_resumes_a_killed_trial_through_s3(tmp_path, s3_env):
    db = storage_url(tmp_path)
    epochs = 6
    path = write_definition(tmp_path, search__epochs=epochs, search__stage1_epochs=1,
                            budget__n_trials=1)
    manage.create("s3", path, db, "s3://dsara-test/studies/s3")
    study = optuna.load_study(study_name="s3", storage=db)
    assert study.user_attrs["artifact_root"] == "s3://dsara-test/studies/s3"

    first = _worker("s3", db, tmp_path / "machine-a", s3_env)
    deadline = time.monotonic() + HANG_S
    while not study.trials or study.trials[0].user_attrs.get("artifact_epoch", 0) < 1:
        assert first.poll() is None, (tmp_path / "machine-a" / "worker.log").read_text()
        assert time.monotonic() < deadline, f"no checkpoint artifact within {HANG_S} s"
        time.sleep(0.05)  # polling the database for the event "checkpoint stored"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    dead = study.trials[0]
    stored = dead.user_attrs["artifact_epoch"]
    assert dead.state.name == "RUNNING" and 1 <= stored < epochs  # killed mid-trial, untold

    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket="dsara-test")["Contents"]]
    assert dead.user_attrs["artifacts"] and all(
        f"studies/s3/{aid}" in keys for aid in dead.user_attrs["artifacts"].values())

    machine_b = tmp_path / "machine-b"  # sees neither machine A's run directory nor its files
    second = _worker("s3", db, machine_b, s3_env)
    assert second.wait(timeout=HANG_S) == 0, (machine_b / "worker.log").read_text()
    dead, retry = study.get_trials()
    assert (dead.state.name, retry.state.name) == ("FAIL", "COMPLETE")
    assert retry.user_attrs["retry_of"] == 0 and retry.params == dead.params
    assert stored <= retry.user_attrs["resumed_from_epoch"] <= stored + 1  # the stored one
    run_b = RunDir(machine_b / "runs" / "s3" / "trial-0")
    assert [r["epoch"] for r in run_b.read_metrics()] == list(range(1, epochs + 1))
    assert torch.load(run_b.checkpoint, weights_only=True)["epoch"] == epochs
    metas = get_all_artifact_meta(retry, storage=study._storage)
    assert sorted(m.filename for m in metas) == sorted([*SYNCED, RESULT])
    assert not (tmp_path / "machine-b" / "runs" / "s3" / "artifacts").exists()  # S3, not a folder
