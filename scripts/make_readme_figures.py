"""Regenerate the README's figures with dsara itself.

    python scripts/make_readme_figures.py            # writes docs/images/

- ``ARNAS_robust.{svg,png}``: the published DSARA/ARNAS robust cell (graphviz when installed);
- ``search_curves.png`` and ``alphas_robust.png``: a real search of the tiny space on synthetic data
  (CPU, about a minute), so the picture shows what `dsara plot search` draws, not a mock-up.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from dsara.plot import draw_architecture, plot_search
from dsara.search import run
from dsara.search.config import SearchConfig

ROOT = Path(__file__).resolve().parents[1]


def tiny_search(out: Path, epochs: int) -> Path:
    cfg = SearchConfig(space="tiny", dataset="synthetic", device="cpu", out=str(out),
                       synthetic={"n_train": 512, "n_test": 64, "image_size": 16},
                       epochs=epochs, stage1_epochs=epochs // 2,  # half the epochs per stage
                       batch_size=16, max_steps=8, pgd_steps=2, step_size=4 / 255)
    run(cfg, progress=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--epochs", type=int, default=10, help="tiny-search epochs (default 10)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))  # small images: threads only contend
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dsara-readme-") as tmp:
        tmp = Path(tmp)
        figures = [p for p in draw_architecture("ARNAS", tmp / "cells") if p.stem == "ARNAS_robust"]
        run_dir = tiny_search(tmp / "search", args.epochs)
        figures += [p for p in plot_search(run_dir, tmp / "plots", formats=("png",))
                    if p.stem in ("search_curves", "alphas_robust")]
        for p in figures:
            print(shutil.copy(p, args.out / p.name))

if __name__ == "__main__":
    main()
