"""`dsara compress`: GDWS or low-rank compression of a trained run into a new run directory."""

from __future__ import annotations

import argparse

from ..compress.run import METHODS, CompressConfig, compress
from ..utils.config import normalize_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress", help="compress a trained network (GDWS or low-rank) into a new run directory",
        description="gdws: generalized depthwise-separable approximation of every dense KxK conv "
        "but the stem, from per-input-channel SVDs weighted by PGD examples of training images "
        "(Dbouk & Shanbhag, NeurIPS 2021), no training. lowrank: Tucker-2 factorisation with "
        "ranks chosen globally for a parameter or multiply-add budget, then a short robust "
        "fine-tune with a named recipe (CSTAR-style; a labelled reconstruction, CSTAR's code was "
        "not available). Writes NEW_RUN_DIR/best.pt (`dsara evaluate` works on it) and "
        "compression.json, and prints clean/PGD validation accuracy before and after and the "
        "measured throughput of both networks.")
    p.add_argument("source", metavar="RUN_DIR", help="a `dsara train` run directory (best.pt) "
                   "or a checkpoint file")
    p.add_argument("--out", required=True, metavar="NEW_RUN_DIR", help="the new run directory")
    p.add_argument("--method", choices=METHODS, default="gdws", help="gdws | lowrank "
                   "(default gdws)")
    p.add_argument("--budget", type=float, help="gdws lego: error budget beta per conv, the "
                   "alpha-weighted squared error it may drop (default 0.005, the authors' "
                   "example); gdws mego: fraction of each conv's multiply-adds kept (default "
                   "0.5); lowrank: fraction of the network's parameters (or MACs) kept "
                   "(default 0.5)")
    p.add_argument("--algorithm", choices=("lego", "mego"), default="lego",
                   help="gdws: lego (error budget) | mego (complexity budget) (default lego)")
    p.add_argument("--budget-kind", choices=("params", "macs"), default="params",
                   help="lowrank: what --budget counts (default params)")
    p.add_argument("--images", dest="n_images", type=int, default=1000, metavar="N",
                   help="gdws: training images whose PGD examples give the error weights alpha "
                   "(default 1000, as the authors)")
    p.add_argument("--recipe", dest="finetune_recipe", default="lowrank-ft", metavar="NAME",
                   help="lowrank: named training recipe of the fine-tune (default lowrank-ft)")
    p.add_argument("--finetune-epochs", type=int, metavar="N", help="lowrank: fine-tune epochs "
                   "(default: the recipe's; 0 = none)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="lowrank: override a TrainConfig field of the fine-tune (lr=0.005)")
    p.add_argument("--val-images", type=int, metavar="N", help="validation images of the "
                   "before/after accuracy (default: the whole held-out validation split)")
    p.add_argument("--no-bench", dest="bench", action="store_false",
                   help="skip the throughput measurement")
    p.add_argument("--bench-repeats", type=int, default=5, metavar="N",
                   help="timed repeats per network "
                   "and batch (default 5; median reported)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the alpha images and attacks")
    p.set_defaults(func=cmd_compress)


def cmd_compress(args) -> int:
    cfg = CompressConfig(
        source=args.source, out=args.out, method=args.method, budget=args.budget,
        algorithm=args.algorithm, budget_kind=args.budget_kind, n_images=args.n_images,
        finetune_recipe=args.finetune_recipe, finetune_epochs=args.finetune_epochs,
        finetune_overrides=normalize_overrides(args.overrides), val_images=args.val_images,
        bench=args.bench, bench_repeats=args.bench_repeats, device=args.device, seed=args.seed)
    compress(cfg)
    return 0
