"""`dsara transfer-matrix`: every pair of trained runs, examples crafted on one and scored on the
other, as JSON, a printed table and a heat map."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..attacks.base import parse_eps
from ..attacks.transfer import transfer_matrix
from ..errors import DsaraError
from ..evaluate.run import prepare_for_eval
from ..evaluate.suite import parse_attack_sets
from ..train.checkpoint import load_trained
from ..utils.device import resolve_device
from ..utils.files import write_json_atomic
from ._common import add_dataset_options, test_split


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transfer-matrix", help="transfer attacks between every pair of runs, "
                       "drawn as a heat map",
                       description="For each run as the source, crafts transfer examples on it "
                       "(MI-FGSM or PGD-20) and scores every run on them; the diagonal is the "
                       "white-box attack. Writes transfer_matrix.json and a heat map "
                       "(transfer_matrix.png/.svg) into --out.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="`dsara train` run directories "
                   "(or checkpoints) trained on the same dataset; at least two")
    p.add_argument("--labels", help="comma-separated names for the runs (default: the "
                   "directory names)")
    p.add_argument("--attack", choices=("mifgsm", "pgd"), default="mifgsm",
                   help="mifgsm: MI-FGSM, mu 1, 10 steps of eps/10 (Dong et al.); pgd: PGD-20 of "
                   "eps/4, random start (default mifgsm)")
    p.add_argument("--eps", default="8/255", help="L-inf radius in [0,1] pixel units "
                   "(default 8/255)")
    p.add_argument("--attack-set", action="append", default=[], metavar="transfer.KEY=VALUE",
                   help="transfer constants: transfer.mu, transfer.iters, transfer.pgd_steps, "
                   "transfer.labels=predicted|true")
    p.add_argument("--dataset", help="dataset (default: the one the first run trained on)")
    p.add_argument("--data-root", help="dataset folder (default: the first run's)")
    add_dataset_options(p)
    p.add_argument("--limit", type=int, help="a class-stratified subset of N test images "
                   "(default: all)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the --limit subset "
                   "(default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of PGD's random starts")
    p.add_argument("--title", help="heat-map title (default: attack, eps and n)")
    p.add_argument("--out", type=Path, default=Path("transfer"), help="output directory "
                   "(default ./transfer)")
    p.set_defaults(func=cmd_transfer_matrix)


def _labels(args) -> list[str]:
    labels = ([t.strip() for t in args.labels.split(",")] if args.labels
              else [Path(r).resolve().name for r in args.runs])
    if len(labels) != len(args.runs) or len(set(labels)) != len(labels):
        raise DsaraError(f"--labels must give {len(args.runs)} distinct names, one per run "
                         f"(got {', '.join(labels)})")
    return labels


def cmd_transfer_matrix(args) -> int:
    from ..plot.transfer import plot_transfer_matrix

    if len(args.runs) < 2:
        raise DsaraError("a transfer matrix needs at least two runs")
    eps = parse_eps(args.eps)
    config = parse_attack_sets(args.attack_set)["transfer"]
    device = resolve_device(args.device)
    models, configs, first = {}, {}, None
    for label, target in zip(_labels(args), args.runs, strict=True):
        model, ckpt, path = load_trained(target)
        models[label] = prepare_for_eval(model).to(device)
        configs[label] = {"run": str(target), "checkpoint": str(path),
                          "model": ckpt.get("model_spec", {}).get("name"),
                          "train_method": ckpt.get("config", {}).get("method")}
        first = ckpt.get("config", {}) if first is None else first
    test, info, subset = test_split(args, first)
    x = test.images.float().div(255).to(device)
    result = transfer_matrix(models, x, test.labels.to(device), eps, args.attack, config,
                             args.batch_size, args.seed)
    result |= {"runs": configs, "dataset": info.name, "split": "test", "subset": subset,
               "device": str(device)}
    print(matrix_table(result))
    write_json_atomic(args.out / "transfer_matrix.json", json.loads(json.dumps(result)))
    for p in plot_transfer_matrix(result, args.out / "transfer_matrix", title=args.title):
        print(p)
    print(args.out / "transfer_matrix.json")
    return 0


def matrix_table(result: dict) -> str:
    names = result["models"]
    width = max(12, *(len(n) for n in names))
    head = (f"{result['attack']} at eps {result['eps'] * 255:.2f}/255, n = {result['n']}: "
            "target accuracy; rows crafted on, columns scored on")
    rows = [" " * width + "".join(f" {n:>{width}}" for n in names)]
    rows.append(f"{'clean':<{width}}" + "".join(f" {100 * result['clean'][n]:>{width - 1}.2f}%"
                                                 for n in names))
    for name, row in zip(names, result["accuracy"], strict=True):
        rows.append(f"{name:<{width}}" + "".join(f" {100 * v:>{width - 1}.2f}%" for v in row))
    return "\n".join([head, *rows])
