"""scripts/gpu_check.sh --dry-run: every step of the prepared GPU measurement runs on the CPU and
its tables land in the page's generated section."""

import subprocess
import sys
from pathlib import Path

import pytest

from dsara.bench.speed_doc import replace_section

ROOT = Path(__file__).resolve().parents[1]


def test_replace_section_replaces_in_place_and_keeps_the_rest(tmp_path):
    page = tmp_path / "speed.md"
    page.write_text("# Speed\n\nhand-written text\n")
    replace_section(page, "gpu", "table one")
    replace_section(page, "gpu", "table two")
    text = page.read_text()
    assert text.count("<!-- gpu:begin -->") == 1 and "table two" in text and "table one" not in text
    assert text.startswith("# Speed\n\nhand-written text\n")


@pytest.mark.slow  # ~30 s of CPU: five steps, each a Python process importing torch
def test_gpu_check_dry_run_runs_every_step_on_the_cpu(tmp_path):
    out, page = tmp_path / "out", tmp_path / "speed.md"
    page.write_text("# Speed\n")
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "OMP_NUM_THREADS": "1",
           "PYTHON": sys.executable, "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out),
                           "--page", str(page)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = (out / "steps.md").read_text()
    for name in ("search bench", "search bench, compile", "train bench", "GPU-only tests",
                 "precision drift", "1-epoch search"):
        assert f"| {name} | ok |" in steps, (steps, (out / "gpu_check.log").read_text()[-3000:])
    text = page.read_text()
    assert "<!-- gpu-check-dry-run:begin -->" in text and "Device: CPU" in text
    assert "| train | resnet18 | pgd-at | reference |" in text  # the training table
    assert "**search_compile**" in text  # (the dry run times it without compiling)
    assert "1-epoch search:" in text and "GPU-only tests:" in text
