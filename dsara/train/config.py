"""A training run's configuration: one typed dataclass (`TrainConfig`), read from TOML / JSON\n(`config_from_dict`) and from a run directory's config.json (`read_config`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..attacks.base import parse_eps
from ..data.datasets import DATASETS, SyntheticConfig
from ..errors import DsaraError
from ..utils.config import did_you_mean
from ..utils.device import LAYOUTS, PRECISIONS, resolve_device, use_bf16, use_channels_last
from ..utils.files import read_text
from .losses import AUX_INPUTS, CRAFT_MODES, STARTS
from .methods import get_method, resolve_options
from .recipes import RECIPES, apply_recipe, is_baseline

SCHEDULES = ("piecewise", "cosine", "cyclic")


LEGACY = {"precision": "fp32", "channels_last": "off"}  # what runs did before these fields


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
        from ..arch.budget import parse_params

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
