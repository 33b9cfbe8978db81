"""`dsara search`: run, or resume, a DSARA search."""

from __future__ import annotations

import argparse
import dataclasses

from ..arch.space import load_space
from ..data.datasets import absolute_root
from ..errors import DsaraError
from ..search import SearchConfig, load_search_config, run
from ..utils.config import did_you_mean, normalize_overrides
from ..utils.lock import BREAK_LOCK_HELP, break_lock
from ..utils.progress import lines_off
from ..utils.tensorboard import for_run
from ._common import S, add_synthetic_options

# (flag, config field, type, help with units)
OPTIONS = [
    ("--space", "space", str, "search space name or TOML path (default dsara)"),
    ("--dataset", "dataset", str, "cifar10 | cifar100 | svhn | imagefolder | synthetic | "
     "cifar10-16 (CIFAR-10 box-filtered to 16x16, a different dataset: "
     "scripts/downsample_cifar10.py) (default cifar10)"),
    ("--data-root", "data_root", str, "folder holding the dataset"),
    ("--epochs", "epochs", int, "search epochs (default 50)"),
    ("--stage1-epochs", "stage1_epochs", int,
     "epochs of stage 1, alpha on the adversarial loss only (default: the authors' schedule, "
     "21 of 50 epochs, i.e. 42%% of --epochs rounded; 0 = stage 2 only, as their released "
     "code runs)"),
    ("--batch-size", "batch_size", int, "images per weight-train and per arch-val batch "
     "(default 32)"),
    ("--max-steps", "max_steps", int, "cap on steps per epoch, for smoke runs (default: all)"),
    ("--lr", "lr", float, "weight SGD learning rate, cosine-annealed (default 0.025)"),
    ("--arch-lr", "arch_lr", float, "alpha Adam learning rate (default 3e-4)"),
    ("--eps", "eps", str, "PGD L-inf radius in [0,1] pixel units, e.g. 8/255 (default 8/255)"),
    ("--step-size", "step_size", str, "PGD step size, e.g. 2/255 (default 2/255)"),
    ("--pgd-steps", "pgd_steps", int, "PGD steps (default 7)"),
    ("--lam", "lam", float, "weight lambda of the adversarial loss in stage 2 (default 0.1)"),
    ("--combine", "combine", str, "stage-2 combination: mgda (min-norm) | sum (default mgda)"),
    ("--order", "order", str, "alpha gradient: second (unrolled, the authors' only one) | first "
     "(the cheaper approximation: no unrolled step) (default second)"),
    ("--partial-k", "partial_k", int, "PC-DARTS: 1/K of the channels through each mixed op, "
     "plus edge normalization beta; C and every stage's channels must divide by K (default 1: "
     "plain DARTS)"),
    ("--seed", "seed", int, "random seed (default 0)"),
    ("--device", "device", str, "auto | cpu | cuda | cuda:N (default auto)"),
    ("--precision", "precision", str, "auto (fp32 until bf16 is shown equal on a GPU) | fp32 | "
     "bf16 (the fast path: bf16 autocast; the unrolled passes stay fp32)"),
    ("--channels-last", "channels_last", str, "auto (on CUDA) | on | off"),
    ("--out", "out", str, "run directory (default runs/search)"),
]
# `--quick`: the main job in seconds on a CPU (13 s on 2 idle cores), on the built-in synthetic data; flags and
# --set still override it
QUICK = {"space": "tiny", "dataset": "synthetic", "epochs": 4, "stage1_epochs": 2,
         "order": "first", "pgd_steps": 2, "step_size": "4/255", "batch_size": 32,
         "out": "runs/quick", "synthetic.n_train": 512, "synthetic.n_test": 128,
         "synthetic.image_size": 16}
FLAGS = [
    ("--download", "download", "let torchvision download the dataset into --data-root"),
    ("--compile", "compile", "torch.compile the supernet"),
    ("--deterministic", "deterministic", "deterministic kernels (slower on CUDA)"),
    ("--sync-bn", "sync_bn", "with torchrun: BatchNorm over the global batch, so N GPUs give the "
     "same search as one (one all-reduce per BN layer)"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="run or resume a DSARA architecture search",
                       description="Two-stage DSARA search. Writes config.json, metrics.jsonl, "
                       "alpha_history.jsonl, architecture.json and checkpoint.pt to --out.")
    p.add_argument("--config", metavar="FILE.toml", help="search config file (fields of "
                   "SearchConfig); flags and --set override it")
    for flag, dest, kind, text in OPTIONS:
        p.add_argument(flag, dest=dest, type=kind, default=S, help=text)
    for flag, dest, text in FLAGS:
        p.add_argument(flag, dest=dest, action="store_true", default=S, help=text)
    add_synthetic_options(p)
    p.add_argument("--quick", action="store_true", help="the main job in about a minute on a "
                   "CPU: the tiny space on the built-in synthetic data (512 images of 16 px), 4 "
                   "first-order epochs of PGD-2, into runs/quick; other flags override it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (lam=0.2, synthetic.n_train=512) or a search "
                   "space key (stages.2.width=1.5); repeatable. weight_method=NAME trains the "
                   "supernet's weights with another training method of dsara train (default "
                   "pgd-at, the authors'; not mart-ss or ladder), weight_method_options.KEY=VALUE "
                   "its constants, weight_beta the TRADES/MART beta (default 6)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the search in RUN_DIR exactly "
                   "where its last checkpoint left it")
    p.add_argument("--force", action="store_true", help="with --resume: continue on another "
                   "device type (cpu vs cuda) than the checkpoint's, although that changes "
                   "precision=auto, channels_last=auto and the random streams (a warning says "
                   "which)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on a terminal, else a plain line every ~30 s or 10%% "
                   "with rate and ETA (default: on)")
    p.add_argument("--tensorboard", nargs="?", const="", metavar="DIR", help="write TensorBoard "
                   "scalars per epoch (accuracies, losses, gamma*, alpha entropy, parameter-free "
                   "ops) to DIR (default RUN_DIR/tensorboard; pip install \"dsara[tensorboard]\")")
    p.add_argument("--plots", action="store_true", help="at the end, draw the searched cells and "
                   "the search curves into RUN_DIR/plots (SVG and PNG)")
    p.add_argument("--break-lock", action="store_true", help=BREAK_LOCK_HELP)
    p.set_defaults(func=cmd_search)


def build_config(args) -> SearchConfig:
    """Config = file + flags + --set; the keys the user gave are remembered for --resume."""
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    given = {dest: getattr(args, dest) for _, dest, *_ in OPTIONS + FLAGS if hasattr(args, dest)}
    given |= {k: v for k, v in vars(args).items() if k.startswith("synthetic.")}
    if given.get("data_root"):
        given["data_root"] = absolute_root(given["data_root"])
    overrides, space = ({k: v for k, v in QUICK.items() if not args.resume}
                        if getattr(args, "quick", False) else {}), {}
    for key, value in normalize_overrides(args.overrides).items():
        (overrides if key.split(".")[0] in fields else space)[key] = value
    overrides |= given
    cfg = load_search_config(args.config, overrides)
    check_space_keys(space, cfg.space, fields)
    cfg.space_overrides = {**cfg.space_overrides, **space}  # flat dotted keys, applied to the space
    explicit = {k.split(".")[0] for k in overrides} | ({"space_overrides"} if space else set())
    cfg.explicit = explicit  # type: ignore[attr-defined]  # compared on --resume
    if args.resume:
        cfg.out = args.resume
    return cfg


def check_space_keys(space: dict, space_name: str, fields: set[str]) -> None:
    """A --set key that is neither a config field nor a key of the space: one line naming both
    lists and the closest key."""
    if not space:
        return
    known = set(load_space(space_name).raw)
    for key in space:
        top = key.split(".")[0]
        if top not in known:
            raise DsaraError(f"--set {key}: unknown key {top!r}"
                             f"{did_you_mean(top, fields | known)}; search config keys: "
                             f"{', '.join(sorted(fields))}; keys of the space {space_name!r}: "
                             f"{', '.join(sorted(known))}")


def cmd_search(args) -> int:
    cfg = build_config(args)
    if args.break_lock:
        break_lock(cfg.out)
    scalars = for_run(args.tensorboard, cfg.out, "search")
    try:  # --no-progress: neither a bar nor the plain lines that replace it in a log
        with lines_off(args.progress is False):
            result = run(cfg, callbacks=[scalars] if scalars else (), resume=bool(args.resume),
                         progress=args.progress, force=args.force)
    finally:
        if scalars:
            scalars.close()
    final = result.final
    print(f"search finished: {len(result.history)} epochs; arch-val clean "
          f"{final.get('val_clean_acc', float('nan')):.3f}, PGD "
          f"{final.get('val_pgd_acc', float('nan')):.3f}")
    print(f"architecture file: {result.run_dir / 'architecture.json'}")
    print(f"genotype: {result.genotype.to_text()}")
    if args.plots:
        from ..plot import draw_architecture, plot_search

        out = result.run_dir / "plots"
        files = draw_architecture(result.architecture, out) + plot_search(result.run_dir, out)
        print(f"plots: {len(files)} files in {out}")
    return 0

