"""optuna-dashboard on a dsara study: start it, wait until it answers, read its JSON API.

dsara studies are plain Optuna studies, so `optuna-dashboard` reads them as they are: the objective
names (``study.set_metric_names``), parameters, user attributes and each trial's files (Optuna
artifacts, `dsara.study.artifacts`)::

    optuna-dashboard sqlite:///dsara.db --artifact-dir runs/studies/NAME/artifacts

`serve` does the same from Python (the tests and ``scripts/dashboard_screenshot.py`` use it): it
runs the `optuna-dashboard` command on a loopback port and returns once ``/api/meta`` answers.
"""

from __future__ import annotations

import contextlib
import json
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


@contextlib.contextmanager
def serve(storage_url: str, artifact_dir: str | Path | None = None, host: str = "127.0.0.1",
          port: int | None = None, wait_s: float = 120) -> Iterator[str]:
    """Run optuna-dashboard on `storage_url`; yields its base URL once its API answers."""
    port = port or free_port(host)
    args = [command(), storage_url, "--host", host, "--port", str(port), "--quiet"]
    if artifact_dir is not None:
        args += ["--artifact-dir", str(artifact_dir)]
    log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server never blocks on it
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
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
