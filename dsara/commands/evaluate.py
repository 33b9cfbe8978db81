"""`dsara evaluate`: accuracy under attacks, worst case per sample, and sanity checks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..attacks import parse_eps
from ..data import SyntheticConfig, load_dataset
from ..device import resolve_device
from ..evaluate import ATTACKS, evaluate, load_trained, parse_attacks, sanity_checks, sanity_table
from ..files import write_json_atomic
from .train import add_dataset_options

DEFAULT_ATTACKS = "clean,fgsm,pgd20,pgd100,cw"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained model under attacks",
                       description="Eval mode, fp32, the whole test split; a sample is robust "
                       "only if correct under every attack asked for. Prints a table and writes "
                       "a JSON report.")
    p.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a `dsara train` run directory (uses best.pt) or a checkpoint file")
    p.add_argument("--attacks", default=DEFAULT_ATTACKS,
                   help=f"comma-separated, from {', '.join(ATTACKS)} (default {DEFAULT_ATTACKS}; "
                   "autoattack needs `pip install pyautoattack`)")
    p.add_argument("--eps", default="8/255", help="L-inf radius in [0,1] pixel units, 8/255 or "
                   "0.031 (default 8/255)")
    p.add_argument("--arch", metavar="FILE_OR_NAME", help="the architecture the checkpoint must "
                   "belong to (refused, naming the owner, if it belongs to another)")
    p.add_argument("--dataset", help="dataset (default: the one the run trained on)")
    p.add_argument("--data-root", help="dataset folder (default: the run's)")
    add_dataset_options(p)
    p.add_argument("--limit", type=int, help="evaluate only the first N test images "
                   "(default: all; a reviewer wants all)")
    p.add_argument("--batch-size", type=int, default=256, help="images per attack batch "
                   "(default 256)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts")
    p.add_argument("--json", metavar="FILE", help="report path (default: evaluation.json beside "
                   "the checkpoint)")
    p.add_argument("--sanity", action="store_true", help="also run the evaluation sanity checks; "
                   "exit status 1 if one fails")
    p.add_argument("--sanity-n", type=int, default=500, help="test images used by the sanity "
                   "checks (default 500)")
    p.set_defaults(func=cmd_evaluate)


def test_split(args, config: dict):
    """The test split the run used, unless flags name another dataset."""
    name = args.dataset or config.get("dataset", "cifar10")
    root = args.data_root or config.get("data_root")
    synthetic = None
    if name == "synthetic":
        fields = dict(config.get("synthetic") or {})
        fields |= {k.split(".", 1)[1]: v for k, v in vars(args).items()
                   if k.startswith("synthetic.")}
        synthetic = SyntheticConfig(**fields)
    _, test, info = load_dataset(name, root, getattr(args, "download", False),
                                 synthetic=synthetic)
    if args.limit is not None:
        test = test.subset(torch.arange(min(max(args.limit, 1), len(test))))
    return test, info


def cmd_evaluate(args) -> int:
    eps = parse_eps(args.eps)
    attacks = parse_attacks(args.attacks)
    model, ckpt, path = load_trained(args.target, args.arch)
    config = ckpt.get("config", {})
    test, info = test_split(args, config)
    device = resolve_device(args.device)
    meta = {"checkpoint": str(path), "model": ckpt.get("model_spec", {}).get("name"),
            "epoch": ckpt.get("epoch"), "dataset": info.name, "split": "test",
            "train_method": config.get("method")}
    report = evaluate(model, test, attacks, eps, batch_size=args.batch_size, device=device,
                      seed=args.seed, meta=meta)
    print(report.table())
    out = report.to_dict()
    failed = False
    if args.sanity:
        n = min(args.sanity_n, len(test))
        x = test.images[:n].float().div(255).to(device)
        results = sanity_checks(model, x, test.labels[:n].to(device), eps,
                                batch_size=args.batch_size, seed=args.seed)
        print(f"\nsanity checks on {n} test images:")
        print(sanity_table(results))
        out["sanity"] = [r.__dict__ for r in results]
        failed = not all(r.passed for r in results)
    json_path = Path(args.json) if args.json else path.parent / "evaluation.json"
    write_json_atomic(json_path, json.loads(json.dumps(out)))
    print(f"report: {json_path}")
    return 1 if failed else 0
