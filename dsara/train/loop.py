"""Adversarial retraining of a searched architecture or a baseline: `run(TrainConfig) -> TrainResult`.

One run directory holds everything: ``config.json`` (the resolved config), ``last.pt`` (written
atomically after every epoch: model, optimizer, scheduler, epoch, best-so-far, history),
``best.pt`` (the weights with the best PGD accuracy on the validation split) and ``metrics.json``.
Calling `run` again on the same directory resumes from ``last.pt``; every random draw is a function
of (seed, epoch), so an interrupted and resumed run ends bit-identical to an uninterrupted one.

Model selection uses a validation split held out (seeded, class-stratified) from the training set;
the test set is never looked at during training.

FGSM-RS guard against catastrophic overfitting (Wong et al., 2020): after every epoch the PGD
accuracy on the validation split is measured; if it falls by more than `overfit_guard` (absolute,
e.g. 0.2 = 20 points) from the previous epoch, training stops and ``best.pt`` (chosen before the
collapse) is the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import parse_eps, pgd
from ..config import did_you_mean
from ..data import DATASETS, Loader, SyntheticConfig, load_dataset, split_train
from ..device import LAYOUTS, PRECISIONS, resolve_device, use_bf16, use_channels_last
from ..errors import DsaraError, Interrupted
from ..files import read_text, write_json_atomic
from ..lock import run_lock
from ..progress import Pace, bar
from .checkpoint import (
    build_from_spec,
    initial_weights,
    load_checkpoint,
    model_spec,
    save_checkpoint,
)
from .losses import AUX_INPUTS, CRAFT_MODES, METHODS, STARTS, AdvParams, Terms, get_method
from .methods import method_options, prepare_loader, resolve_options
from .recipes import RECIPES, apply_recipe, is_baseline

SCHEDULES = ("piecewise", "cosine", "cyclic")
_LEGACY = {"precision": "fp32", "channels_last": "off"}  # what runs did before these fields
_KINDS = {"str": (str, os.PathLike), "bool": (bool,), "int": (int,), "float": (int, float)}


@dataclass
class TrainConfig:
    # architecture file (.json), built-in cell name (ARNAS, DARTS_V2), baseline name, or a dsara
    # checkpoint (.pt) to fine-tune (its network and weights)
    arch: str
    out: str  # run directory
    dataset: str = "cifar10"  # cifar10 | cifar100 | svhn | imagefolder | synthetic
    data_root: str | None = None  # dataset directory (not needed for synthetic)
    download: bool = False  # fetch cifar/svhn into data_root if missing
    synthetic: dict[str, Any] | None = None  # SyntheticConfig fields, for dataset = synthetic
    recipe: str | None = None  # named recipe (train/recipes.py) the other fields started from
    method: str = "pgd-at"  # a name of METHODS (pgd-at | trades | mart | fgsm-rs | iat | ...)
    method_options: dict[str, Any] | None = None  # the method's constants (methods.OPTIONS)
    unlabeled: str | None = None  # mart-ss: folder of unlabeled images (any layout)
    teacher: str | None = None  # mart-ss: pseudo-labeller; ladder: model to fine-tune (RUN_DIR)
    epochs: int = 200  # DSARA reference retraining: 200
    batch_size: int = 128  # images per SGD step
    lr: float = 0.1  # SGD learning rate at the start (per batch of batch_size, not rescaled)
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 1e-4 cell nets (DSARA ref.), 5e-4 baselines (Rice)
    # piecewise: lr x0.1 at each milestone; cosine: to 0 at the end; cyclic: triangle 0 -> lr -> 0
    # peaking at mid-training (Wong et al.), taken at each epoch's middle
    schedule: str = "piecewise"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of epochs (ref.: 100 and 150 of 200)
    grad_clip: float | None = None  # max gradient norm; None: 5 cell nets (DARTS ref.), 0 = off
    eps: float = 8 / 255  # L-inf radius of training attacks, in [0, 1] pixel units
    step_size: float | None = None  # inner attack step in pixel units; None: method default
    steps: int | None = None  # inner attack steps; None: method default (10; fgsm-rs 1)
    beta: float = 6.0  # TRADES / MART regularizer weight
    craft_mode: str | None = None  # train | eval: model mode while crafting; None: method default
    attack_start: str | None = None  # uniform | normal | zero; None: method default
    start_std: float = 0.001  # std of the normal start x + std N(0, 1), pixel units
    aux_input: str = "adv"  # adv | clean: input of the auxiliary-head loss (ARNAS: clean)
    cells: int | None = None  # total cells of a cell network; None: the architecture's
    channels: int | None = None  # initial channels C of a cell network; None: the architecture's
    width: int | None = None  # first-stage channels of a baseline; None: its published width
    params: int | None = None  # parameter budget: picks channels (or width) nearest to it
    train_size: int | None = None  # training images used (seeded, class-stratified); None: all
    auxiliary_weight: float | None = None  # auxiliary-head CE weight; None: the architecture's
    drop_path: float | None = None  # final drop-path probability (ramped from 0); None: arch's
    activation: str | None = None  # relu | swish | sparta [recon], every cell type; None: arch's
    val_size: int = 1000  # train images held out for model selection (~, per-class rounding)
    val_steps: int = 10  # PGD steps (of eps/4) of the validation attack
    overfit_guard: float = 0.2  # fgsm-rs: stop if val PGD accuracy falls by more (0..1) in an epoch
    augment: bool = True  # random crop of the crop_pad-padded image + horizontal flip
    crop_pad: int = 4  # zero padding of the random crop, pixels per side
    cutout: int = 0  # Cutout square side in pixels (DeVries & Taylor 2017), 0 = off; ARNAS: 16
    seed: int = 0
    device: str = "cpu"  # auto | cpu | cuda | cuda:N
    # bf16 autocast with fp32 master weights for the training forward/backward and the inner
    # attack (the fast path); auto = fp32 until bf16 is shown equal on a GPU (device.py); a recipe
    # sets its authors' precision. Validation and `dsara evaluate` always run fp32.
    precision: str = "auto"  # auto | fp32 | bf16; config.json records the resolved value
    channels_last: str = "auto"  # auto (on CUDA) | on | off; config.json records on | off

    def resolved(self) -> TrainConfig:
        """Fill method and model defaults and validate; the result is what config.json holds."""
        self.check_types()
        spec = get_method(self.method)
        baseline = is_baseline(self.arch)
        c = dataclasses.replace(
            self, out=str(self.out), milestones=tuple(float(m) for m in self.milestones),
            step_size=spec.step_factor * self.eps if self.step_size is None else self.step_size,
            steps=spec.steps if self.steps is None else self.steps,
            craft_mode=self.craft_mode or spec.craft_mode,
            attack_start=self.attack_start or spec.start,
            weight_decay=(5e-4 if baseline else 1e-4) if self.weight_decay is None
            else self.weight_decay,
            grad_clip=(0.0 if baseline else 5.0) if self.grad_clip is None else self.grad_clip,
            method_options=resolve_options(self.method, self.method_options),
            device=str(resolve_device(self.device)))
        if c.precision in PRECISIONS and c.channels_last in LAYOUTS:  # else validate() says so
            dev = torch.device(c.device)
            c.precision = "bf16" if use_bf16(c.precision, dev) else "fp32"
            c.channels_last = "on" if use_channels_last(c.channels_last, dev) else "off"
        c.validate()
        return c

    def check_types(self) -> None:
        """A value of the wrong type (``epochs = "10"`` in TOML, ``--set steps=1.5``) fails here,
        naming its field, instead of as a TypeError deep inside training."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), f.type.split(" |")[0].split("[")[0]
            if value is None and "None" in f.type:
                continue
            if kind == "tuple":
                ok = isinstance(value, (list, tuple)) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            elif kind == "dict":
                ok = isinstance(value, dict)
            else:
                ok = isinstance(value, _KINDS[kind]) and (kind == "bool"
                                                           or not isinstance(value, bool))
            if not ok:
                raise DsaraError(f"train config: {f.name} must be {f.type}, got {value!r}")
        if self.synthetic:
            try:
                SyntheticConfig(**self.synthetic)
            except TypeError as e:
                raise DsaraError(f"train config: synthetic: {e}; fields: "
                                 f"{', '.join(f.name for f in dataclasses.fields(SyntheticConfig))}"
                                 ) from None

    def validate(self) -> None:
        checks = [
            (self.dataset in DATASETS, f"unknown dataset {self.dataset!r}; datasets: "
                                       f"{', '.join(DATASETS)}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; schedules: "
                                         f"{', '.join(SCHEDULES)}"),
            (all(0 < m < 1 for m in self.milestones), "milestones are fractions of the epochs, "
                                                       f"each in (0, 1); got {self.milestones}"),
            (0 <= self.eps <= 1, f"eps must be in [0, 1] (pixel units), got {self.eps}"),
            (self.steps >= 1 and self.step_size >= 0, "attack steps must be >= 1 and step "
                                                      f"size >= 0, got {self.steps}, "
                                                      f"{self.step_size}"),
            (self.val_size >= 1, f"val_size must be >= 1 image, got {self.val_size}"),
            (self.train_size is None or self.train_size >= 1,
             f"train_size must be >= 1 image, got {self.train_size}"),
            (self.params is None or (self.channels is None and self.width is None),
             "give a parameter budget or channels / width, not both: the budget picks them"),
            (self.val_steps >= 0, f"val_steps must be >= 0, got {self.val_steps}"),
            (min(self.momentum, self.weight_decay, self.grad_clip, self.beta) >= 0,
             "momentum, weight_decay, grad_clip and beta must be >= 0, got "
             f"{self.momentum}, {self.weight_decay}, {self.grad_clip}, {self.beta}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, "
                                           f"got {self.precision!r}"),
            (self.channels_last in LAYOUTS, f"channels_last must be one of {', '.join(LAYOUTS)}, "
                                            f"got {self.channels_last!r}"),
            (0 < self.overfit_guard <= 1, "overfit_guard is an accuracy drop in (0, 1], got "
                                          f"{self.overfit_guard}"),
            (self.method != "fgsm-rs" or self.steps == 1,
             f"fgsm-rs takes exactly one attack step (Wong et al.), got steps = {self.steps}; "
             "drop --steps, or use --method pgd-at for a multi-step attack"),
            *_choice_checks(self),
            (self.start_std >= 0 and self.cutout >= 0 and self.crop_pad >= 0,
             "start_std, cutout and crop_pad must be >= 0, got "
             f"{self.start_std}, {self.cutout}, {self.crop_pad}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DsaraError(message)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d


def _choice_checks(c: TrainConfig) -> list[tuple[bool, str]]:
    choices = [("recipe", c.recipe, (None, *RECIPES)), ("craft_mode", c.craft_mode, CRAFT_MODES),
               ("attack_start", c.attack_start, STARTS), ("aux_input", c.aux_input, AUX_INPUTS)]
    return [(value in known, f"unknown {name} {value!r}; known: "
                             f"{', '.join(k for k in known if k is not None)}")
            for name, value, known in choices]


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int  # 1-based epoch of best.pt, 0 if none
    best_val_robust: float  # PGD accuracy on the validation split, 0..1
    best_val_clean: float
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers

def milestone_epochs(milestones: tuple[float, ...], epochs: int) -> list[int]:
    """The 0-based epochs from which the piecewise lr is x0.1 lower, one per milestone that fits.

    A fraction m lands on epoch floor(m * epochs + 0.5) (the nearest epoch, halves up), kept in
    1..epochs-1 so that the first epoch trains at the full lr; milestones that land on one epoch
    are spread to neighbouring ones (later ones move later; at the end of the run, earlier ones
    move earlier), and a run with fewer than len(milestones) + 1 epochs drops the last ones. So
    with the default 0.5, 0.75: 1 epoch trains at lr; 2 at lr, lr/10; 3 at lr, lr/10, lr/100;
    4 at lr, lr, lr/10, lr/100; 200 drops at epochs 100 and 150, as plain rounding would.
    """
    fit = sorted(milestones)[:max(epochs - 1, 0)]
    out: list[int] = []
    for m in fit:  # each after the one before
        out.append(max(min(math.floor(m * epochs + 0.5), epochs - 1), out[-1] + 1 if out else 1))
    for i in reversed(range(len(out))):  # each before the one after, all before the end
        out[i] = min(out[i], (out[i + 1] if i + 1 < len(out) else epochs) - 1)
    return out


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """Multiplier of cfg.lr during `epoch` (0-based)."""
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    if cfg.schedule == "cyclic":
        return 1 - abs(2 * (epoch + 0.5) / cfg.epochs - 1)
    return 0.1 ** sum(epoch >= k for k in milestone_epochs(cfg.milestones, cfg.epochs))


def schedule_line(cfg: TrainConfig) -> str:
    """The piecewise lr per epoch range, 1-based as the epoch lines count."""
    bounds = [0, *milestone_epochs(cfg.milestones, cfg.epochs), cfg.epochs]
    parts = [f"{cfg.lr * 0.1 ** i:.4g} in epoch{'s' if b - a > 1 else ''} "
             f"{a + 1}{f'-{b}' if b - a > 1 else ''}"
             for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]
    return (f"lr schedule: {', '.join(parts)} (milestones "
            f"{', '.join(f'{m:g}' for m in cfg.milestones)} of {cfg.epochs} epochs, see --help)")


def data_line(cfg: TrainConfig, fit, val) -> str:
    """Training and held-out image counts; says why the held-out count is not val_size."""
    line = f"data: {len(fit)} training images, {len(val)} held out for validation"
    if len(val) != cfg.val_size:
        per_class = torch.bincount(val.labels.cpu()).tolist()
        lo, hi = min(per_class), max(per_class)
        line += (f", not val_size {cfg.val_size}: each class gives its share rounded to whole "
                 f"images ({lo if lo == hi else f'{lo}-{hi}'} of each of {len(per_class)} "
                 "classes); with equal classes a multiple of the class count is exact")
    return line


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A distinct non-negative seed per (run seed, epoch, random stream); epoch -1 = outside
    the epochs (weight init, validation)."""
    return ((seed * 1_000_003 + epoch + 1) * 8 + stream) % 2**63


def load_data(cfg: TrainConfig):
    """(train part, validation part, test, info); the validation part is held out of training."""
    synthetic = SyntheticConfig(**cfg.synthetic) if cfg.synthetic else None
    train, test, info = load_dataset(cfg.dataset, cfg.data_root, cfg.download, synthetic=synthetic)
    if cfg.val_size >= len(train):
        raise DsaraError(f"val_size {cfg.val_size} must be smaller than the training set "
                         f"({len(train)} images)")
    fit, val = split_train(train, arch_fraction=cfg.val_size / len(train), seed=cfg.seed)
    if cfg.train_size is not None and cfg.train_size < len(fit):
        _, fit = split_train(fit, arch_fraction=cfg.train_size / len(fit), seed=cfg.seed)
    return fit, val, test, info


def fit_to_budget(cfg: TrainConfig, num_classes: int, log: Callable[[str], None]) -> TrainConfig:
    """The config with channels (cell networks) or width (baselines) picked by its budget."""
    if cfg.params is None:
        return cfg
    from ..budget import fit_budget

    fit = fit_budget(cfg.arch, cfg.params, cells=cfg.cells, num_classes=num_classes)
    log(f"parameter budget: {fit.describe()}")
    return dataclasses.replace(cfg, **{fit.knob: fit.value})


def adv_params(cfg: TrainConfig, aux_weight: float) -> AdvParams:
    """The training attack and objective settings of a resolved config."""
    return AdvParams(cfg.eps, cfg.step_size, cfg.steps, cfg.beta, aux_weight,
                     method_options(cfg.method, cfg.method_options), craft_mode=cfg.craft_mode,
                     start=cfg.attack_start, start_std=cfg.start_std, aux_input=cfg.aux_input)


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    # fused kernels on CUDA (one launch per step), the multi-tensor path elsewhere
    fast = {"fused": True} if torch.device(cfg.device).type == "cuda" else {"foreach": True}
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, **fast)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_factor(cfg, e))


@torch.no_grad()
def _correct(model, x, y) -> torch.Tensor:
    return (model(x).argmax(1) == y).sum()


def validate(model: nn.Module, loader: Loader, cfg: TrainConfig) -> dict[str, float]:
    """Clean and PGD accuracy (eps, step eps/4, val_steps, fixed random start) in eval mode."""
    model.eval()
    gen = torch.Generator(loader.device).manual_seed(epoch_seed(cfg.seed, -1, 3))
    clean = robust = torch.zeros((), device=loader.device)
    for x, y in loader.epoch(0):
        clean = clean + _correct(model, x, y)
        x_adv = pgd(model, x, y, cfg.eps, cfg.eps / 4, cfg.val_steps, generator=gen)
        robust = robust + _correct(model, x_adv, y)
    model.train()
    n = len(loader.labels)
    return {"val_clean": clean.item() / n, "val_robust": robust.item() / n}


def autocast(cfg: TrainConfig):
    """The autocast context of the training forward passes and the inner attack."""
    device = torch.device(cfg.device)
    return torch.autocast(device.type, torch.bfloat16, enabled=use_bf16(cfg.precision, device))


def train_step(model, x, y, method, params: AdvParams, optimizer, grad_clip: float, generator,
               amp: Callable = contextlib.nullcontext) -> tuple[torch.Tensor, Terms]:
    """One SGD step of `method` on the batch (x, y): attack and forward under `amp`, backward
    outside it; no host sync (the loss and terms stay on the device)."""
    with amp():
        loss, terms = method(model, x, y, params, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    optimizer.step()
    return loss.detach(), terms


def train_epoch(model, loader: Loader, epoch: int, method, params: AdvParams, optimizer,
                grad_clip: float, generator, amp: Callable = contextlib.nullcontext,
                pace: Pace | None = None) -> dict[str, float]:
    """One epoch of adversarial training; returns the mean loss and the mean of each term.
    `pace` prints the run's progress lines where no bar is drawn."""
    model.train()
    sums: dict[str, torch.Tensor] = {}
    for x, y in bar(loader.epoch(epoch), total=len(loader), desc=f"train epoch {epoch + 1}",
                    unit="batch"):
        loss, terms = train_step(model, x, y, method, params, optimizer, grad_clip, generator, amp)
        if pace is not None:
            pace.update()
        for k, v in {"loss": loss, **terms}.items():
            sums[k] = sums.get(k, 0) + v.float()
    means = {k: v.item() / len(loader) for k, v in sums.items()}
    if not math.isfinite(means["loss"]):
        raise DsaraError(f"the training loss became {means['loss']} in epoch {epoch + 1}; "
                         "lower --lr or check the data")
    return means


# ----------------------------------------------------------------------------- state

def _previous(run_dir: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """last.pt of this run directory, after checking it is a run of the same config."""
    path = run_dir / "last.pt"
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    _check_same_run(ckpt.get("config", {}), cfg, run_dir)
    return ckpt


def _restore(ckpt: dict[str, Any] | None, model, optimizer, scheduler) -> dict[str, Any]:
    """The loop state of `ckpt` with model, optimizer and scheduler loaded; fresh without one."""
    fresh = {"epoch": 0, "best": {"epoch": 0, "val_robust": -1.0, "val_clean": 0.0},
             "history": [], "stopped_early": False}
    if ckpt is None:
        return fresh
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    return {k: ckpt[k] for k in fresh}


def _legacy_attack(saved: dict[str, Any]) -> dict[str, str]:
    """How a run saved before craft_mode / attack_start existed crafted its attacks."""
    mode = "eval" if saved.get("method") in ("trades", "mart") else "train"
    return {"craft_mode": mode, "attack_start": "uniform"}


def _check_same_run(saved: dict[str, Any], cfg: TrainConfig, run_dir: Path) -> None:
    now = cfg.to_dict()
    ignore = {"out", "device", "data_root"}  # a moved dataset does not block a resume
    # a run written before a field existed ran with that field's legacy value; the device is
    # ignored, but a device-type change shows up as a change of the resolved precision / layout
    saved = {**_LEGACY, **_legacy_attack(saved), **saved}
    # other fields newer than the saved run compare as their defaults
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    diff = sorted(k for k in now if k not in ignore and saved.get(k, default[k]) != now[k])
    if not diff:
        return
    if "arch" in diff:
        raise DsaraError(f"{run_dir} holds a run of architecture {saved.get('arch')!r}, not "
                         f"{cfg.arch!r}; choose another --out directory")
    raise DsaraError(f"{run_dir} holds a run with another config (differs in: {', '.join(diff)}); "
                     "resume with the same options or choose another --out directory")


def _save(run_dir: Path, cfg, spec, model, optimizer, scheduler, state, improved: bool) -> None:
    """last.pt first: a crash before best.pt is written is repaired on resume by `_repair_best`
    from last.pt's own weights, so best.pt never holds an epoch that last.pt does not know."""
    common = {"model_spec": spec, "config": cfg.to_dict(), "model": model.state_dict()}
    save_checkpoint(run_dir / "last.pt", {**common, **state, "optimizer": optimizer.state_dict(),
                                          "scheduler": scheduler.state_dict()})
    if improved:
        _save_best(run_dir, common, state)
    _write_metrics(run_dir, state)


def _save_best(run_dir: Path, common: dict[str, Any], state: dict[str, Any]) -> None:
    save_checkpoint(run_dir / "best.pt", {**common, "epoch": state["epoch"], "best": state["best"]})


def _write_metrics(run_dir: Path, state: dict[str, Any]) -> None:
    write_json_atomic(run_dir / "metrics.json", {"best": state["best"],
                                                 "stopped_early": state["stopped_early"],
                                                 "history": state["history"]})


def _repair_best(run_dir: Path, previous: dict[str, Any] | None, state: dict[str, Any]) -> None:
    """After a crash between last.pt and best.pt (or metrics.json): when last.pt's epoch is the
    best one, best.pt must hold that epoch's weights, which are last.pt's."""
    if previous is None:
        return
    best = run_dir / "best.pt"
    if state["best"]["epoch"] == state["epoch"] > 0 and (
            not best.is_file() or load_checkpoint(best).get("epoch") != state["epoch"]):
        common = {k: previous[k] for k in ("model_spec", "config", "model")}
        _save_best(run_dir, common, state)
    _write_metrics(run_dir, state)


def _format(record: dict[str, Any], epochs: int) -> str:
    terms = "  ".join(f"{k} {v:.4f}" for k, v in record["train"].items())
    return (f"epoch {record['epoch']:>3}/{epochs}  lr {record['lr']:.4g}  {terms}  "
            f"val clean {100 * record['val_clean']:.1f}%  "
            f"val pgd {100 * record['val_robust']:.1f}%  {record['time_s']:.1f} s")


# ----------------------------------------------------------------------------- the loop

def run(config: TrainConfig, max_epochs: int | None = None,
        log: Callable[[str], None] = print,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train (or resume) the run in ``config.out``. `max_epochs` caps the epochs done by this call
    (a time-sliced job); calling again continues where it stopped. `on_epoch` gets each epoch's
    record after its checkpoint is written (e.g. `dsara.tensorboard`)."""
    cfg = config.resolved()
    with run_lock(cfg.out):  # one process per run directory, for this process's whole run
        return _run(cfg, max_epochs, log, on_epoch)


def _run(cfg: TrainConfig, max_epochs: int | None, log: Callable[[str], None],
         on_epoch: Callable[[dict[str, Any]], None] | None) -> TrainResult:
    run_dir = Path(cfg.out)
    device = torch.device(cfg.device)
    fit, val, test, info = load_data(cfg)
    cfg = fit_to_budget(cfg, info.num_classes, log)
    previous = _previous(run_dir, cfg)
    log(data_line(cfg, fit, val))
    if cfg.schedule == "piecewise":
        log(schedule_line(cfg))
    # a resumed run rebuilds its model from the checkpoint, not from a file that may have moved
    spec = previous["model_spec"] if previous else model_spec(
        cfg.arch, info.num_classes, info.mean, info.std, cells=cfg.cells, channels=cfg.channels,
        width=cfg.width, auxiliary_weight=cfg.auxiliary_weight, drop_path=cfg.drop_path,
        activation=cfg.activation)
    torch.manual_seed(epoch_seed(cfg.seed, -1, 0))  # weight init
    cl = cfg.channels_last == "on"
    model = build_from_spec(spec).to(device, memory_format=torch.channels_last if cl
                                     else torch.contiguous_format)
    if previous is None:
        initial_weights(model, cfg.arch)  # fine-tuning a checkpoint starts from its weights
    optimizer, scheduler = make_optimizer(model, cfg)
    state = _restore(previous, model, optimizer, scheduler)
    _repair_best(run_dir, previous, state)
    if state["epoch"] == 0:
        write_json_atomic(run_dir / "config.json", cfg.to_dict())
    loader = prepare_loader(cfg, model, fit, val, test, state["epoch"], log)
    val_loader = Loader(val, min(cfg.batch_size, len(val)), shuffle=False, drop_last=False,
                        device=device)
    method = get_method(cfg.method).fn
    macro = getattr(model, "macro", None)
    params = adv_params(cfg, macro.auxiliary_weight if getattr(model, "has_auxiliary", False)
                        else 0.0)
    final_drop_path = macro.drop_path if macro is not None else 0.0
    start, done = state["epoch"], 0
    left = cfg.epochs - start if max_epochs is None else min(max_epochs, cfg.epochs - start)
    pace = Pace("train", left * len(loader), unit="batch")  # training batches; validation apart
    for epoch in range(start, cfg.epochs):
        if state["stopped_early"] or (max_epochs is not None and done >= max_epochs):
            break
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(cfg.seed, epoch, 1))  # drop-path masks
        gen = torch.Generator(device).manual_seed(epoch_seed(cfg.seed, epoch, 2))  # attack starts
        model.drop_path_prob = final_drop_path * epoch / cfg.epochs
        lr = optimizer.param_groups[0]["lr"]
        try:
            pace.what = f"train (epoch {epoch + 1}/{cfg.epochs})"
            train_terms = train_epoch(model, loader, epoch, method, params, optimizer,
                                      cfg.grad_clip, gen, amp=lambda: autocast(cfg), pace=pace)
        except KeyboardInterrupt:
            kept = (f"keeps last.pt of epoch {epoch}: the same command continues from there"
                    if epoch else "has no epoch done yet: the same command starts it again")
            raise Interrupted(f"interrupted in epoch {epoch + 1}; {run_dir} {kept}") from None
        scheduler.step()
        record = {"epoch": epoch + 1, "lr": lr, "train": train_terms,
                  **validate(model, val_loader, cfg)}
        record["time_s"] = time.perf_counter() - t0
        prev = state["history"][-1]["val_robust"] if state["history"] else None
        state["history"].append(record)
        improved = record["val_robust"] > state["best"]["val_robust"]
        if improved:
            state["best"] = {"epoch": epoch + 1, "val_robust": record["val_robust"],
                             "val_clean": record["val_clean"]}
        if (cfg.method == "fgsm-rs" and prev is not None
                and prev - record["val_robust"] > cfg.overfit_guard):
            state["stopped_early"] = True
            log(f"catastrophic overfitting: val PGD accuracy fell from {100 * prev:.1f}% to "
                f"{100 * record['val_robust']:.1f}%; stopping, best.pt is from epoch "
                f"{state['best']['epoch']}")
        state["epoch"] = epoch + 1
        _save(run_dir, cfg, spec, model, optimizer, scheduler, state, improved)
        log(_format(record, cfg.epochs))
        if on_epoch is not None:
            on_epoch(record)
        done += 1
    return TrainResult(run_dir, state["epoch"], state["best"]["epoch"],
                       max(state["best"]["val_robust"], 0.0), state["best"]["val_clean"],
                       state["stopped_early"], state["history"])


def config_from_dict(raw: dict[str, Any], where: str = "train config") -> TrainConfig:
    """A TrainConfig from TOML / JSON / command-line values; eps and step size may be ``8/255``."""
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    raw = apply_recipe(raw)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise DsaraError(f"{where}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], known)}; "
                         f"known keys: {', '.join(known)}")
    for key in ("arch", "out"):
        if raw.get(key) in (None, ""):
            raise DsaraError(f"{where}: missing {key!r}")
    d = dict(raw)
    for key in ("eps", "step_size"):
        if d.get(key) is not None:
            d[key] = parse_eps(d[key])
    if d.get("params") is not None:
        from ..budget import parse_params

        d["params"] = parse_params(d["params"])
    if isinstance(d.get("milestones"), str):
        try:
            d["milestones"] = [float(m) for m in d["milestones"].split(",") if m.strip()]
        except ValueError:
            raise DsaraError(f"{where}: milestones {d['milestones']!r} must be comma-separated "
                             "fractions of the epochs, e.g. 0.5,0.75") from None
    if d.get("synthetic") is not None and not isinstance(d["synthetic"], dict):
        raise DsaraError(f"{where}: synthetic must be a table of SyntheticConfig fields")
    return TrainConfig(**d)


def read_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config of a run directory."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise DsaraError(f"{run_dir} has no config.json; is it a `dsara train` run directory?")
    try:
        d = json.loads(read_text(path, "train config"))
    except json.JSONDecodeError as e:
        raise DsaraError(f"cannot read {path}: {e}") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in known})


__all__ = ["METHODS", "TrainConfig", "TrainResult", "config_from_dict", "load_data", "read_config",
           "run"]
