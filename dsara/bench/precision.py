"""Does bf16 autocast give the same search as fp32? The "equal results" half of the CPU-bf16 decision.

`compare(cfg, precisions)` runs the same short search (same seed, same data) once per precision,
side by side in one process, and compares every epoch's architecture parameters with the first
precision's: cosine of the flattened raw α, the largest difference of softmax(α) (the op weights
the genotype is derived from), whether the derived genotypes are equal, and each run's wall time.
A control run in the baseline precision with the next seed shows how far two equally valid runs
drift apart anyway: a precision whose drift stays well below it gives "equal results".
`scripts/precision_check.py` prints it as a table; docs/speed.md holds the CPU figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import DsaraError
from ..search import SearchConfig, run
from .common import publish


def _alphas(run_dir: Path) -> list[dict[str, torch.Tensor]]:
    lines = (run_dir / "alpha_history.jsonl").read_text().splitlines()
    return [{k: torch.tensor(v) for k, v in json.loads(line)["alphas"].items()} for line in lines]


def _flat(alphas: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([alphas[k].flatten() for k in sorted(alphas)])


def _op_weights(alphas: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([alphas[k].softmax(-1).flatten() for k in sorted(alphas)])


def compare(cfg: SearchConfig, precisions: tuple[str, ...] = ("fp32", "bf16"),
            workdir: str | Path | None = None, control: bool = True) -> dict[str, Any]:
    """Run `cfg` once per precision (and, with `control`, the first precision at seed + 1);
    per epoch, α of every run against the first run's."""
    variants = [(p, {"precision": p}) for p in precisions]
    if control:
        variants.append((f"{precisions[0]} seed+1", {"precision": precisions[0],
                                                     "seed": cfg.seed + 1}))
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for precision, overrides in variants:
            precision = precision if precision not in runs else f"{precision} (run {len(runs)})"
            c = dataclasses.replace(cfg, **overrides, out=str(Path(tmp) / f"run{len(runs)}"))
            start = time.perf_counter()
            result = run(c, progress=False)
            runs[precision] = {"seconds": time.perf_counter() - start,
                               "alphas": _alphas(result.run_dir),
                               "genotype": str(result.genotype),
                               "history": result.history}
    base_name = precisions[0]
    base = runs[base_name]
    rows = []
    for name, r in runs.items():
        for epoch, (a, b) in enumerate(zip(r["alphas"], base["alphas"])):
            cos = torch.nn.functional.cosine_similarity(_flat(a), _flat(b), dim=0).item()
            rows.append({"precision": name, "epoch": epoch, "alpha_cosine": cos,
                         "max_op_weight_diff": (_op_weights(a) - _op_weights(b)).abs().max().item()})
    return {"config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"},
            "baseline": base_name, "threads": torch.get_num_threads(), "rows": rows,
            "runs": {n: {"seconds": r["seconds"], "same_genotype": r["genotype"] == base["genotype"],
                         "final_clean": r["history"][-1].get("val_clean_acc"),
                         "final_pgd": r["history"][-1].get("val_pgd_acc")}
                     for n, r in runs.items()}}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Baseline: {report['baseline']}; torch threads {report['threads']}.", "",
             "| precision | wall s | same genotype as baseline | final arch-val clean | final "
             "arch-val PGD |", "|---|---|---|---|---|"]
    for name, r in report["runs"].items():
        lines.append(f"| {name} | {r['seconds']:.1f} | {'yes' if r['same_genotype'] else 'no'} | "
                     f"{_pct(r['final_clean'])} | {_pct(r['final_pgd'])} |")
    lines += ["", "| precision | epoch | cosine of α to baseline | max abs diff of softmax(α) |",
              "|---|---|---|---|"]
    for row in report["rows"]:
        if row["precision"] != report["baseline"]:
            lines.append(f"| {row['precision']} | {row['epoch']} | {row['alpha_cosine']:.4f} | "
                         f"{row['max_op_weight_diff']:.2e} |")
    return "\n".join(lines) + "\n"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="precision_check", description=__doc__.split("\n")[0])
    p.add_argument("--space", default="tiny")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--n-train", type=int, default=512, help="synthetic training images")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--pgd-steps", type=int, default=3)
    p.add_argument("--precision", action="append", choices=["fp32", "bf16"],
                   help="repeatable; the first is the baseline (default fp32 then bf16)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-control", action="store_true", help="skip the seed+1 control run")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    try:
        cfg = SearchConfig(space=args.space, dataset="synthetic", epochs=args.epochs,
                           synthetic={"n_train": args.n_train, "image_size": args.image_size},
                           batch_size=args.batch, pgd_steps=args.pgd_steps,
                           device=args.device, out="unused").validate()
        report = compare(cfg, tuple(args.precision or ("fp32", "bf16")),
                         control=not args.no_control)
    except DsaraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return publish(report, "precision_check.py", argv, markdown(report), args.json, args.markdown)
