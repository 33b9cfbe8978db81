"""A screenshot of optuna-dashboard on a real dsara study, for the README.

    python scripts/dashboard_screenshot.py     # writes docs/images/dashboard_*.png

Runs a smoke-sized study (tiny space, synthetic data; a few CPU minutes) with `--trials` trials
in a temporary SQLite database, starts optuna-dashboard on it (loopback, with the study's artifact
store) and photographs the study page and one trial's page with its files in headless Chromium.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dsara.study import dashboard, manage, worker

ROOT = Path(__file__).resolve().parents[1]


# the smoke study with a little more search per trial, so that the trials differ
DEFINITION = """
description = "README screenshot: tiny space, synthetic 8x8 data, 4 short search epochs per trial"
[search]
space = "tiny"
dataset = "synthetic"
synthetic = { n_train = 256, n_test = 32, image_size = 8 }
epochs = 4
stage1_epochs = 2
batch_size = 16
max_steps = 6
pgd_steps = 1
device = "cpu"
[params.lam]
type = "float"
low = 0.05
high = 1.0
log = true
[params."stages.2.width"]
type = "float"
low = 1.0
high = 2.0
step = 0.5
[objective]
kind = "supernet"
metrics = ["clean_acc", "pgd_acc"]
[sampler]
kind = "random"
seed = 0
[budget]
n_trials = TRIALS
"""


def run_study(folder: Path, trials: int) -> str:
    (folder / "shot.toml").write_text(DEFINITION.replace("TRIALS", str(trials)))
    db = f"sqlite:///{folder / 'dsara.db'}"
    manage.create("smoke", folder / "shot.toml", db, folder / "runs")
    worker.run_worker("smoke", db, log=print)
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--trials", type=int, default=6, help="trials (default 6)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        db = run_study(Path(tmp), args.trials)
        with dashboard.serve(db, Path(tmp) / "runs" / "smoke" / "artifacts") as base:
            (summary,) = dashboard.get_json(f"{base}/api/studies")["study_summaries"]
            page = f"{base}/dashboard/studies/{summary['study_id']}"
            print(dashboard.screenshot(page, args.out / "dashboard_study.png", size=(1400, 1000)))
            print(dashboard.screenshot(f"{page}/trials", args.out / "dashboard_trial.png",
                                       size=(1800, 1000)))


if __name__ == "__main__":
    main()
