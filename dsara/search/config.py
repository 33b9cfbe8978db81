"""The search configuration: one typed dataclass, the single source of truth for a search.

Defaults are the reference hyper-parameters of the DSARA authors' code (DESIGN.md, "Two-stage
search"): second-order (unrolled) alpha updates, the only ones their code implements (first order
is the named, cheaper option `order="first"`); their learning-rate schedule (the cosine scheduler
stepped at the start of each epoch, so epoch e trains at the cosine value of e + 1); fp32. One
deliberate addition: stage 1 runs for the authors' described 21 of 50 epochs, which their released
code disables (`stage1_epochs=0` reproduces the released code).
A config is saved as `config.json` in the run directory and re-read on `--resume`; a config saved
before a field existed gets the value the older code used (`LEGACY`), so an old run resumes as it
began.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..attacks.base import parse_eps
from ..errors import DsaraError
from ..utils.config import Fields, apply_overrides, read_toml


@dataclass
class SearchConfig:
    # what is searched
    space: str = "dsara"  # search space name or path to its TOML
    space_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"stages.2.width": 1.5}
    # PC-DARTS when K > 1: 1/K of the channels go through each mixed op, and edge-normalization
    # weights beta (softmax over each node's incoming edges) scale the edges, also in derivation
    partial_k: int = 1

    # data
    dataset: str = "cifar10"  # cifar10 | cifar100 | svhn | imagefolder | synthetic
    data_root: str | None = None  # folder holding the dataset
    download: bool = False  # let torchvision download it into data_root
    synthetic: dict[str, Any] = field(default_factory=dict)  # SyntheticConfig fields
    arch_fraction: float = 0.5  # part of the training split held out as arch-val (reference: half)
    data_seed: int = 0  # seeds the weight-train / arch-val split

    # schedule
    epochs: int = 50  # search epochs (reference: 50)
    # epochs of stage 1 (alpha on the adversarial loss only). None = the authors' schedule: their
    # commented-out `if epoch <= 20:` runs stage 1 in epochs 0..20, 21 of 50, and is scaled as 42%
    # of `epochs`, rounded (default_stage1). 0 = stage 2 only, as the released code runs
    # (`if False:  #if epoch <= 20:`).
    stage1_epochs: int | None = None
    batch_size: int = 32  # images per weight-train batch and per arch-val batch (reference: 32)
    max_steps: int | None = None  # cap on steps per epoch (smoke runs); None = whole split

    # weights: SGD, cosine schedule (reference)
    lr: float = 0.025  # learning rate at batch 32, cosine-annealed to lr_min
    lr_min: float = 0.001
    # epoch e (0-based) trains at the cosine value of e + lr_epoch_offset: 1 = the authors' (their
    # train_search.py L114-116 steps the scheduler at the start of each epoch, so the first epoch
    # already trains below lr and the last at lr_min); 0 = the textbook (first epoch at lr)
    lr_epoch_offset: int = 1
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0  # max global L2 norm of the weight gradient

    # architecture: Adam (reference)
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    alpha_init_std: float = 1e-3  # alpha ~ alpha_init_std * N(0, 1)
    # second: the unrolled update (finite-difference Hessian-vector product), the authors' only
    # one (README of fyqsama/ARNAS); first: the cheaper approximation (no unrolled weight step)
    order: str = "second"

    # inner maximization: L-inf PGD with random start (reference: 8/255, 2/255, 7 steps)
    eps: float = 8 / 255  # radius in [0, 1] pixel units
    step_size: float = 2 / 255
    pgd_steps: int = 7

    # the weight step: pgd-at (the authors') or any method of dsara.train.methods.METHODS that
    # needs no run-level setup (not mart-ss, ladder); it crafts its own examples with the
    # eps / step_size / pgd_steps above
    weight_method: str = "pgd-at"
    weight_method_options: dict[str, Any] = field(default_factory=dict)  # its method_options
    weight_beta: float = 6.0  # TRADES / MART beta of the weight step

    # derivation, opt-in remedy for collapse to parameter-free ops (None = off, the authors'):
    # P-DARTS' architecture refinement (Chen et al., ICCV 2019) keeps at most this many
    # skip_connect ops in each normal (non-reduction) cell type, re-deriving after zeroing the
    # weakest skip weight; P-DARTS uses 2. Only the derived cells change, not the search.
    skip_cap: int | None = None
    # how the cells are chosen from the trained supernet: "magnitude" (DARTS: the largest
    # softmax(alpha), the authors') | "pt" (opt-in remedy: perturbation-based selection, a
    # simplified reconstruction of DARTS-PT, Wang et al., ICLR 2021 -- no fine-tuning between
    # decisions; search/perturb.py): the op / edges whose removal hurts the supernet's PGD
    # accuracy most on `pt_images` fixed images of the arch-validation half
    selection: str = "magnitude"
    pt_images: int = 256
    pt_measure: str = "accuracy"  # accuracy (ties by the loss, as DARTS-PT) | loss

    # the two-stage objective
    lam: float = 0.1  # weight of the adversarial loss in stage 2 (reference lambda)
    combine: str = "mgda"  # mgda (min-norm of g_nat, lam * g_adv) | sum (ablation)

    # execution
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto = fp32 until bf16 is shown equal on a GPU (device.AUTO_BF16_SHOWN) | fp32 | bf16 (the
    # fast path: bf16 autocast for PGD and the forward passes; the unrolled passes stay fp32)
    precision: str = "auto"
    channels_last: str = "auto"  # auto (on CUDA) | on | off
    compile: bool = False  # torch.compile the supernet
    # data-parallel runs (torchrun) only: BatchNorm over the global batch instead of each rank's
    # slice; exact equivalence to one process, but 2 all-reduces per BN layer per pass (slow)
    sync_bn: bool = False
    deterministic: bool = False  # deterministic kernels (slower on CUDA)
    out: str = "runs/search"  # run directory

    @property
    def stage1(self) -> int:
        return default_stage1(self.epochs) if self.stage1_epochs is None else self.stage1_epochs

    def validate(self) -> SearchConfig:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (0 <= self.stage1 <= self.epochs, f"stage1_epochs ({self.stage1}) must be between 0 "
             f"and epochs ({self.epochs})"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (0 < self.arch_fraction < 1, f"arch_fraction must be in (0, 1), got "
             f"{self.arch_fraction}"),
            (self.eps >= 0 and math.isfinite(self.eps), f"eps must be >= 0, got {self.eps}"),
            (self.step_size >= 0, f"step_size must be >= 0, got {self.step_size}"),
            (self.pgd_steps >= 0, f"pgd_steps must be >= 0, got {self.pgd_steps}"),
            (self.lam >= 0, f"lam must be >= 0, got {self.lam}"),
            (self.lr > 0 and self.lr_min >= 0, "lr must be > 0 and lr_min >= 0"),
            (self.lr_epoch_offset in (0, 1), f"lr_epoch_offset must be 0 or 1, got "
             f"{self.lr_epoch_offset}"),
            (self.arch_lr >= 0, "arch_lr must be >= 0"),
            (self.partial_k >= 1, f"partial_k must be >= 1, got {self.partial_k}"),
            (self.skip_cap is None or self.skip_cap >= 0, f"skip_cap must be >= 0, got "
             f"{self.skip_cap}"),
            (self.selection in ("magnitude", "pt"), f"selection must be magnitude or pt, got "
             f"{self.selection!r}"),
            (self.pt_images >= 1, f"pt_images must be >= 1, got {self.pt_images}"),
            (self.pt_measure in ("accuracy", "loss"), f"pt_measure must be accuracy or loss, "
             f"got {self.pt_measure!r}"),
            (self.selection != "pt" or self.skip_cap is None, "selection pt chooses the cells "
             "by perturbation; skip_cap applies to the magnitude derivation: set one of them"),
            (self.combine in ("mgda", "sum"), f"combine must be mgda or sum, got "
             f"{self.combine!r}"),
            (self.order in ("first", "second"), f"order must be first or second, got "
             f"{self.order!r}"),
            (self.precision in ("auto", "fp32", "bf16"), f"precision must be auto, fp32 or "
             f"bf16, got {self.precision!r}"),
            (self.channels_last in ("auto", "on", "off"), "channels_last must be auto, on or off"),
        ]
        for ok, message in checks:
            if not ok:
                raise DsaraError(message)
        from .weight_method import check_weight_method

        check_weight_method(self.weight_method, self.weight_method_options)
        self._check_inner_step()
        return self

    def _check_inner_step(self) -> None:
        """Refuse, before any work, weight-step settings that cannot run or that the second-order
        update would model wrongly."""
        if self.weight_method == "fgsm-rs" and self.pgd_steps != 1:
            raise DsaraError(f"weight_method fgsm-rs takes exactly one attack step, but pgd_steps "
                             f"= {self.pgd_steps}; add --set pgd_steps=1 (and a step_size such "
                             "as 10/255)")
        if self.order == "second" and self.weight_method != "pgd-at":
            raise DsaraError(f"order = second models the inner weight step as SGD on the PGD-AT "
                             f"loss, but weight_method = {self.weight_method!r} takes another "
                             "step; use --order first with it, or weight_method pgd-at")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["arch_betas"] = list(self.arch_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "search config") -> SearchConfig:
        f = Fields(d, where)
        kw = {}
        for fd in dataclasses.fields(cls):
            if fd.name in d:
                f.used.add(fd.name)
                kw[fd.name] = _coerce(fd.name, d[fd.name], where)
        f.finish()
        return cls(**kw).validate()


def from_saved(raw: dict[str, Any], where: str) -> SearchConfig:
    """A run directory's saved config, with every field it predates set to what built it."""
    return SearchConfig.from_dict({**LEGACY, **raw}, where)


def default_stage1(epochs: int) -> int:
    """Stage-1 epochs of the authors' two-stage schedule: 21 of 50 (their `epoch <= 20` branch),
    kept as the same share (42%) of another epoch count, rounded half up: 10 -> 4, 20 -> 8."""
    return (42 * epochs + 50) // 100  # integer arithmetic: exactly 21 at 50 epochs


_FLOATS = {"arch_fraction", "lr", "lr_min", "momentum", "weight_decay", "grad_clip", "arch_lr",
           "arch_weight_decay", "alpha_init_std", "lam", "weight_beta"}
_INTS = {"partial_k", "data_seed", "epochs", "batch_size", "seed", "pgd_steps", "lr_epoch_offset",
         "pt_images"}

# What a config saved before a field existed ran with (`from_saved`): the value the older code used.
LEGACY = {"lr_epoch_offset": 0}


def _coerce(name: str, value: Any, where: str) -> Any:
    """Accept TOML/JSON values, including eps as "8/255"; reject wrong types with the key name."""
    try:
        if name in ("eps", "step_size"):
            return parse_eps(value)
        if name in _FLOATS:
            return float(value)
        if name in _INTS or name in ("stage1_epochs", "max_steps", "skip_cap"):
            if value is None and name in ("stage1_epochs", "max_steps", "skip_cap"):
                return None
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        if name == "arch_betas":
            return tuple(float(b) for b in value)
        if name in ("download", "compile", "deterministic", "sync_bn"):
            if not isinstance(value, bool):
                raise ValueError
        if name in ("space_overrides", "synthetic", "weight_method_options") and \
                not isinstance(value, dict):
            raise ValueError
    except (TypeError, ValueError):
        raise DsaraError(f"{where}: {name} = {value!r} has the wrong type") from None
    return value


def load_search_config(path: str | Path | None = None, overrides=None) -> SearchConfig:
    """A config from an optional TOML file plus dotted overrides (``lam=0.2``, ``eps="4/255"``)."""
    raw = read_toml(Path(path)) if path else {}
    raw = apply_overrides(raw, overrides, where=str(path or "search config"))
    return SearchConfig.from_dict(raw, str(path or "search config"))
