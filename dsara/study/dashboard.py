"""optuna-dashboard on a dsara study: start it, wait until it answers, read its JSON API.

dsara studies are plain Optuna studies, so `optuna-dashboard` reads them as they are: the objective
names (``study.set_metric_names``), parameters, user attributes and each trial's files (Optuna
artifacts, `dsara.study.artifacts`)::

    optuna-dashboard sqlite:///dsara.db --artifact-dir runs/studies/NAME/artifacts

``dsara study dashboard NAME`` (`run`) serves it with the study's own artifact store, S3 included.
`serve` starts either from Python (the tests and ``scripts/dashboard_screenshot.py`` use it) on a
loopback port and returns once ``/api/meta`` answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DsaraError

INSTALL = "pip install optuna-dashboard"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def command() -> str:
    """The `optuna-dashboard` executable beside this Python, else on PATH."""
    beside = Path(sys.executable).with_name("optuna-dashboard")
    found = str(beside) if beside.is_file() else shutil.which("optuna-dashboard")
    if not found:
        raise DsaraError(f"optuna-dashboard is not installed: {INSTALL}")
    return found


def get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
        return response.read()


def get_json(url: str) -> Any:
    return json.loads(get(url))


def run(name: str, storage: str | None = None, host: str = "127.0.0.1", port: int = 8080,
        artifact_root: str | Path | None = None, log=print) -> None:
    """Serve optuna-dashboard on study `name` with the study's artifact store (a folder or S3,
    which the plain ``optuna-dashboard --artifact-dir`` cannot reach); blocks until Ctrl-C."""
    try:
        import optuna_dashboard
    except ImportError:
        raise DsaraError(f"dsara study dashboard needs optuna-dashboard: {INSTALL}") from None
    from .artifacts import store_for
    from .manage import open_study

    opened = open_study(name, storage, artifact_root=artifact_root)
    store = store_for(opened.study, opened.artifact_root)
    log(f"optuna-dashboard of study {name!r}: http://{host}:{port}/dashboard/studies/"
        f"{opened.study._study_id} (Ctrl-C stops it)")
    optuna_dashboard.run_server(opened.study._storage, host=host, port=port, artifact_store=store)


@contextlib.contextmanager
def serve(storage_url: str, artifact_dir: str | Path | None = None, host: str = "127.0.0.1",
          port: int | None = None, wait_s: float = 120,
          study: str | None = None) -> Iterator[str]:
    """Run optuna-dashboard on `storage_url` (with `study`: through ``dsara study dashboard``);
    yields its base URL once its API answers."""
    port = port or free_port(host)
    if study is None:
        args = [command(), storage_url, "--host", host, "--port", str(port), "--quiet"]
        if artifact_dir is not None:
            args += ["--artifact-dir", str(artifact_dir)]
    else:
        args = [sys.executable, "-m", "dsara", "study", "dashboard", study, "--storage",
                storage_url, "--host", host, "--port", str(port)]
    here = str(Path(__file__).resolve().parents[2])  # this dsara, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server never blocks on it
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=env)
    base = f"http://{host}:{port}"
    try:
        _wait_until_up(proc, base, wait_s, log)
        yield base
    finally:
        log.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_up(proc: subprocess.Popen, base: str, wait_s: float, log) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace").strip().splitlines()
            raise DsaraError(f"optuna-dashboard exited with status {proc.returncode}: "
                             f"{err[-1] if err else 'no message'}")
        try:
            get(f"{base}/api/meta", timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise DsaraError(f"optuna-dashboard did not answer at {base} within "
                                 f"{wait_s:g} s") from None
            time.sleep(0.2)  # the server is still starting: ask again


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def screenshot(url: str, out: str | Path, size: tuple[int, int] = (1400, 900),
               settle_ms: int = 20000) -> Path:
    """A PNG of `url` in headless Chromium, after `settle_ms` of (virtual) time for the
    dashboard's scripts to fetch and draw."""
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        raise DsaraError("no Chromium on PATH for the screenshot (apt-get install chromium)")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               f"--virtual-time-budget={settle_ms}", f"--screenshot={out}", url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    if proc.returncode != 0 or not out.is_file():
        raise DsaraError(f"Chromium could not take the screenshot of {url}: "
                         f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}")
    return out
