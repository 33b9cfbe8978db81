"""`dsara train`: adversarially retrain an architecture or a baseline; run again to resume."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..data.datasets import absolute_root
from ..errors import Interrupted
from ..train.config import config_from_dict
from ..train.loop import run
from ..train.methods import METHODS
from ..train.recipes import RECIPES
from ..utils.config import apply_overrides, read_toml
from ..utils.lock import BREAK_LOCK_HELP, break_lock
from ..utils.tensorboard import for_run
from ._common import S, add_dataset_options

# (flag, config field, type, help with units); defaults live in TrainConfig alone
OPTIONS = [
    ("--recipe", "recipe", str, "a named, complete set of training settings that the other "
     "flags override one by one: " + "; ".join(f"{k} = {r.reproduces}" for k, r in RECIPES.items())
     + " (default: none, dsara's defaults below)"),
    ("--dataset", "dataset", str, "cifar10 | cifar100 | svhn | imagefolder | synthetic | "
     "cifar10-16 (CIFAR-10 box-filtered to 16x16, a different dataset: "
     "scripts/downsample_cifar10.py) (default cifar10)"),
    ("--data-root", "data_root", str, "folder holding the dataset"),
    ("--method", "method", str, f"{' | '.join(METHODS)} (default pgd-at). Their constants: "
     "--set method_options.NAME=VALUE (docs/methods.md). [recon] = our reconstruction, not the "
     "authors' code: mart-ss pseudo-labelling, bang's gradient scaling, jsigr's penalties, "
     "so-at's Krylov direction, parts of ladder"),
    ("--unlabeled", "unlabeled", str, "mart-ss: folder of unlabeled images (any layout, the "
     "dataset's image size); test/validation duplicates are dropped"),
    ("--teacher", "teacher", str, "RUN_DIR of a dsara train run on the same data: mart-ss's "
     "pseudo-labeller, or the network ladder fine-tunes"),
    ("--epochs", "epochs", int, "training epochs (default 200)"),
    ("--batch-size", "batch_size", int, "images per SGD step (default 128)"),
    ("--lr", "lr", float, "initial SGD learning rate (default 0.1)"),
    ("--momentum", "momentum", float, "SGD momentum (default 0.9)"),
    ("--weight-decay", "weight_decay", float,
     "L2 weight decay (default 1e-4 for cell networks, 5e-4 for baselines)"),
    ("--schedule", "schedule", str, "piecewise (x0.1 at each milestone) | cosine | cyclic "
     "(triangle 0 -> lr -> 0 peaking mid-training, per epoch) (default piecewise)"),
    ("--milestones", "milestones", str, "piecewise milestones as fractions of --epochs, "
     "comma-separated (default 0.5,0.75); each lands on the nearest epoch (halves up), never "
     "on the first one; milestones on one epoch move to neighbouring ones, and a run with fewer "
     "epochs than milestones + 1 drops the last: 2 epochs train at lr, lr/10; 3 at lr, lr/10, "
     "lr/100"),
    ("--grad-clip", "grad_clip", float, "max gradient norm, 0 = off (default 5 for cell networks, "
     "off for baselines)"),
    ("--eps", "eps", str, "training attack L-inf radius in [0,1] pixel units, 8/255 or 0.031 "
     "(default 8/255)"),
    ("--step-size", "step_size", str, "inner attack step, e.g. 2/255 (default eps/4; "
     "fgsm-rs 1.25*eps)"),
    ("--steps", "steps", int, "inner attack steps (default 10; fgsm-rs takes exactly 1)"),
    ("--craft-mode", "craft_mode", str, "train | eval: the model's mode while the training "
     "attack is crafted; drop-path is off either way (default: train for pgd-at and fgsm-rs, "
     "eval for trades and mart, as their authors)"),
    ("--attack-start", "attack_start", str, "uniform (in the eps-ball) | normal "
     "(x + start-std * N(0,1)) | zero (default: uniform; normal for trades and mart)"),
    ("--start-std", "start_std", float, "std of the normal attack start, pixel units "
     "(default 0.001)"),
    ("--aux-input", "aux_input", str, "adv | clean: input of the auxiliary-head loss "
     "(default adv; the ARNAS code: clean)"),
    ("--beta", "beta", float, "TRADES / MART regularizer weight (default 6)"),
    ("--cells", "cells", int, "total cells of a cell network (default: the architecture's)"),
    ("--channels", "channels", int, "initial channels C of a cell network (default: the "
     "architecture's)"),
    ("--width", "width", int, "channels of a baseline's first stage, the others scaled alike "
     "(default: its published width, e.g. 64 for resnet18)"),
    ("--params", "params", str, "parameter budget, e.g. 1.2M or 800k: picks --channels (cell "
     "networks) or --width (baselines) whose count is nearest; auxiliary head excluded"),
    ("--auxiliary-weight", "auxiliary_weight", float,
     "auxiliary head loss weight, 0 = no head (default: the architecture's, e.g. 0.4)"),
    ("--drop-path", "drop_path", float, "final drop-path probability, ramped up from 0 "
     "(default: the architecture's)"),
    ("--activation", "activation", str, "relu | swish | sparta: the cells' activation, every "
     "cell type (default: the architecture's; sparta is a labelled reconstruction)"),
    ("--train-size", "train_size", int, "training images used, a seeded class-stratified "
     "subset of what --val-size leaves (default: all)"),
    ("--val-size", "val_size", int, "training images held out for model selection, drawn "
     "per class with each class's share rounded to whole images, so 64 of 10 equal classes "
     "holds out 60 (the run's first line says how many) (default 1000)"),
    ("--val-steps", "val_steps", int, "PGD steps of the validation attack (default 10)"),
    ("--overfit-guard", "overfit_guard", float, "fgsm-rs: stop when validation PGD accuracy "
     "falls by more than this fraction in one epoch (default 0.2)"),
    ("--cutout", "cutout", int, "Cutout square side in pixels, 0 = off (default 0; arnas 16)"),
    ("--crop-pad", "crop_pad", int, "zero padding of the random crop, pixels per side "
     "(default 4)"),
    ("--seed", "seed", int, "random seed (default 0)"),
    ("--device", "device", str, "auto | cpu | cuda | cuda:N (default auto)"),
    ("--precision", "precision", str, "auto (fp32 until bf16 is shown "
     "equal on a GPU) | fp32 | bf16 (the fast path); a recipe sets its authors' precision; "
     "validation and evaluation always run fp32"),
    ("--channels-last", "channels_last", str, "auto (on CUDA) | on | off"),
]




def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="adversarially retrain an architecture or a baseline",
                       description="Adversarial training with model selection on a held-out "
                       "validation split. Writes config.json, last.pt (every epoch), best.pt and "
                       "metrics.json to --out; run the same command again to resume.")
    p.add_argument("arch", metavar="ARCH", help="architecture file (.json), built-in cell "
                   "(ARNAS, DARTS_V2, ...), baseline (resnet18, preact_resnet18, wrn34_10, "
                   "wrn34_r, resnet_tiny, ...) or a dsara checkpoint (.pt) to fine-tune")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--config", metavar="FILE.toml", help="TrainConfig fields; flags override it")
    for flag, dest, kind, text in OPTIONS:
        p.add_argument(flag, dest=dest, type=kind, default=S, help=text)
    add_dataset_options(p)
    p.add_argument("--no-augment", dest="augment", action="store_false", default=S,
                   help="no random crop + flip")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any TrainConfig field (beta=5, synthetic.noise=0.1)")
    p.add_argument("--tensorboard", nargs="?", const="", metavar="DIR", help="write TensorBoard "
                   "scalars per epoch (losses, validation accuracies, lr) to DIR (default "
                   "RUN_DIR/tensorboard; pip install \"dsara[tensorboard]\")")
    p.add_argument("--max-epochs", type=int, help="stop after this many epochs in this call; "
                   "run again to continue")
    p.add_argument("--break-lock", action="store_true", help=BREAK_LOCK_HELP)
    p.set_defaults(func=cmd_train)


def build_config(args):
    raw = read_toml(Path(args.config)) if args.config else {}
    raw.setdefault("device", "auto")
    given = {k: v for k, v in vars(args).items()
             if k in {d for _, d, *_ in OPTIONS} | {"augment", "download"}}
    synthetic = {k: v for k, v in vars(args).items() if k.startswith("synthetic.")}
    raw = apply_overrides(raw, {**given, **synthetic, "arch": args.arch, "out": args.out})
    raw = apply_overrides(raw, args.overrides, "the --set overrides")
    if isinstance(raw.get("data_root"), str):  # stored absolute: evaluate works from any folder
        raw["data_root"] = absolute_root(raw["data_root"])
    return config_from_dict(raw)


def cmd_train(args) -> int:
    cfg = build_config(args)
    if args.break_lock:
        break_lock(cfg.out)
    if (Path(cfg.out) / "last.pt").exists():
        print(f"resuming the run in {cfg.out}")
    scalars = for_run(args.tensorboard, cfg.out, "train")
    try:
        result = run(cfg, max_epochs=args.max_epochs, on_epoch=scalars)
    except Interrupted as e:
        raise Interrupted(f"{e}: {shlex.join(['dsara', *getattr(args, 'argv', ['train'])])}"
                          ) from None
    finally:
        if scalars:
            scalars.close()
    print(f"done {result.epochs_done} epochs; best.pt = epoch {result.best_epoch} "
          f"(val clean {100 * result.best_val_clean:.1f}%, val PGD "
          f"{100 * result.best_val_robust:.1f}%)"
          + ("; stopped early (catastrophic overfitting)" if result.stopped_early else ""))
    print(f"next: dsara evaluate {cfg.out}")
    return 0
