"""`dsara evaluate`: accuracy under attacks, worst case per sample, and sanity checks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..attacks.autoattack import INSTALL_AUTOATTACK
from ..attacks.base import parse_eps
from ..attacks.registry import ATTACKS, parse_attacks
from ..data.split import stratified_subset
from ..errors import DsaraError
from ..evaluate.file import choose_path
from ..evaluate.run import evaluate
from ..evaluate.sanity import sanity_checks, sanity_table
from ..evaluate.suite import (
    CONFIGS,
    DETECTORS,
    Suite,
    SuiteOptions,
    details_table,
    parse_attack_sets,
)
from ..train.checkpoint import load_trained
from ..utils.device import resolve_device
from ..utils.files import write_json_atomic
from ..utils.lock import run_lock
from ._common import add_dataset_options, test_split

DEFAULT_ATTACKS = "clean,fgsm,pgd20,pgd100,cw,autoattack"


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
    p.add_argument("--limit", type=int, help="evaluate a seeded, class-stratified subset of N "
                   "test images, recorded in the report (default: all; a reviewer wants all)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the --limit and "
                   "--sanity-n subsets (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="images per attack batch "
                   "(default 256)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts")
    p.add_argument("--json", metavar="FILE", help="report path (default: evaluation.json beside "
                   "the checkpoint; export's model card is built from it)")
    p.add_argument("--force", action="store_true", help="replace evaluation.json even when it "
                   "holds a fuller evaluation (more images, other attacks or eps); without it a "
                   "smaller one is written beside it, named by its setting")
    p.add_argument("--surrogate", metavar="RUN_DIR[,RUN_DIR...]", help="surrogate models of "
                   "the transfer-mifgsm / transfer-pgd attacks (logits averaged over them)")
    p.add_argument("--detect", choices=DETECTORS, help="also evaluate a detector: squeeze = "
                   "feature squeezing (bit depth, median, NL-means with OpenCV), threshold at "
                   "5%% FPR on the run's held-out clean training images; adds the adaptive "
                   "attacker squeeze-adaptive [recon]")
    p.add_argument("--attack-set", action="append", default=[], metavar="GROUP.KEY=VALUE",
                   help=f"an attack constant, repeatable; groups {', '.join(CONFIGS)}; e.g. "
                   "so-krylov.iters=5 so-krylov.solver=minres (cg|minres|gmres) "
                   "so-krylov.steps=10 transfer.mu=1.0 transfer.iters=10 "
                   "transfer.labels=predicted ai-gan.lam=1.0 ai-gan.gamma=10 "
                   "ai-gan.c_fraction=0.5 ai-gan.stage2_epochs=3 squeeze.bits=5 squeeze.median=2 "
                   "squeeze.nlmeans=auto squeeze.fpr=0.05. so-krylov, ai-gan's lam/gamma/c and "
                   "the adaptive attacker are reconstructions [recon]; see the README")
    p.add_argument("--sanity", action="store_true", help="also run the evaluation sanity checks; "
                   "exit status 1 if one fails")
    p.add_argument("--sanity-n", type=int, default=500, help="test images used by the sanity "
                   "checks, a seeded class-stratified subset of the evaluated ones (default 500)")
    p.set_defaults(func=cmd_evaluate)


def _attacks(text: str) -> list[str]:
    """The attack names; with the default list and no AutoAttack library, one line says so
    before any work (the headline worst case must not quietly leave AutoAttack out)."""
    try:
        return parse_attacks(text)
    except DsaraError:
        if text != DEFAULT_ATTACKS or "autoattack" not in ATTACKS:
            raise
        without = DEFAULT_ATTACKS.replace(",autoattack", "")
        raise DsaraError(f"the default attacks include autoattack, which needs the AutoAttack "
                         f"library: {INSTALL_AUTOATTACK}; or leave it out with --attacks "
                         f"{without}") from None


def _sanity(args, model, test, eps, device) -> tuple[list, dict]:
    """The sanity checks on a seeded, class-stratified subset of the evaluated images."""
    part, subset = stratified_subset(test, args.sanity_n, args.subset_seed)
    x, y = part.images.float().div(255).to(device), part.labels.to(device)
    return sanity_checks(model, x, y, eps, batch_size=args.batch_size, seed=args.seed), subset


def _in_split(inner: dict, outer: dict) -> dict:
    """`inner`'s record with its indices as positions in the whole split, not in `outer`."""
    if "indices" not in outer:
        return inner
    if "indices" not in inner:  # the sanity checks used every evaluated image
        return outer
    return {**inner, "of": outer["of"], "indices": [outer["indices"][i] for i in inner["indices"]]}


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def train_parts(args, config: dict):
    """(fit part, held-out part) of the run's training split, as `dsara train` divided it."""
    import dataclasses

    from ..train.config import TrainConfig
    from ..train.split import load_data

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    fields = {k: v for k, v in config.items() if k in known}
    for key in ("dataset", "data_root"):
        if getattr(args, key, None):
            fields[key] = getattr(args, key)
    fit, held_out, _, _ = load_data(TrainConfig(**fields))
    return fit, held_out


def cmd_evaluate(args) -> int:
    eps = parse_eps(args.eps)
    attacks = _attacks(args.attacks)
    model, ckpt, path = load_trained(args.target, args.arch)
    with run_lock(path.parent):  # it writes its files there: not while a run (or another) does
        return _evaluate(args, eps, attacks, model, ckpt, path)


def _evaluate(args, eps, attacks, model, ckpt, path: Path) -> int:
    config = ckpt.get("config", {})
    test, info, subset = test_split(args, config)
    device = resolve_device(args.device)
    meta = {"checkpoint": str(path), "model": ckpt.get("model_spec", {}).get("name"),
            "epoch": ckpt.get("epoch"), "dataset": info.name, "split": "test",
            "train_method": config.get("method")}
    options = SuiteOptions(surrogates=_split(args.surrogate), detect=args.detect,
                           configs=parse_attack_sets(args.attack_set), cache_dir=path.parent)
    suite = Suite(model.eval().float().to(device), attacks, eps, test, options,
                  lambda: train_parts(args, config), device=device, batch_size=args.batch_size)
    report = evaluate(model, test, suite.names, eps, batch_size=args.batch_size, device=device,
                      seed=args.seed, meta=meta, attack_fns=suite.attack_fns())
    report.details = suite.finish()
    print(report.table())
    if report.details:
        print(details_table(report.details))
    out = {**report.to_dict(), "subset": subset}
    failed = False
    if args.sanity:
        results, sanity_subset = _sanity(args, model, test, eps, device)
        print(f"\nsanity checks on {sanity_subset['n']} test images "
              f"({sanity_subset['selection']}):")
        print(sanity_table(results))
        out["sanity"] = [r.__dict__ for r in results]
        out["sanity_subset"] = _in_split(sanity_subset, subset)
        failed = not all(r.passed for r in results)
    json_path, kept = ((Path(args.json), None) if args.json
                       else choose_path(path.parent, out, args.force))
    write_json_atomic(json_path, json.loads(json.dumps(out)))
    print(f"report: {json_path}" + (f" ({kept})" if kept else ""))
    if args.sanity:
        _sanity_pictures(json_path)
    return 1 if failed else 0


def _sanity_pictures(json_path: Path) -> None:
    """Accuracy vs eps and vs steps beside the report, where matplotlib is installed."""
    try:
        from ..plot.train import plot_sanity

        paths = plot_sanity(json_path)
    except DsaraError as e:  # matplotlib missing: the numbers are in the report all the same
        print(f"no sanity pictures: {e}")
        return
    print(f"sanity pictures: {', '.join(map(str, paths))}")
