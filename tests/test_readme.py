"""The README's quickstart block runs as written (offline, CPU)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_commands() -> list[str]:
    blocks = re.findall(r"```bash quickstart\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README must have exactly one ```bash quickstart block"
    lines = [ln.strip() for ln in blocks[0].splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_quickstart_block_is_found_and_only_uses_dsara():
    commands = quickstart_commands()
    assert len(commands) >= 8
    assert all(c.startswith("dsara ") for c in commands)


@pytest.mark.slow
@pytest.mark.timeout(5400)  # bounds a hang: the quickstart took 27 min beside other jobs (~85 s idle)
def test_quickstart_runs_as_written(tmp_path):
    env = dict(os.environ)
    env.pop("DSARA_STORAGE", None)  # the quickstart uses the default storage, in its own cwd
    for command in quickstart_commands():
        argv = [sys.executable, "-m", "dsara", *shlex.split(command)[1:]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        if command.startswith("dsara search"):
            assert "architecture file: runs/search/architecture.json" in done.stdout
    assert (tmp_path / "runs/report.html").exists()
    assert (tmp_path / "runs/best.json").exists()
