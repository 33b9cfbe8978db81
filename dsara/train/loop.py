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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks.gradient import pgd
from ..data.loader import Loader
from ..errors import DsaraError, Interrupted
from ..utils.device import use_bf16
from ..utils.files import write_json_atomic
from ..utils.lock import run_lock
from ..utils.progress import Pace, bar
from .checkpoint import (
    build_from_spec,
    initial_weights,
    load_checkpoint,
    model_spec,
    save_checkpoint,
)
from .config import LEGACY, TrainConfig, config_from_dict, read_config
from .losses import AdvParams, Terms
from .methods import METHODS, get_method, method_options, prepare_loader
from .split import load_data


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int  # 1-based epoch of best.pt, 0 if none
    best_val_robust: float  # PGD accuracy on the validation split, 0..1
    best_val_clean: float
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


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


def fit_to_budget(cfg: TrainConfig, num_classes: int, log: Callable[[str], None]) -> TrainConfig:
    """The config with channels (cell networks) or width (baselines) picked by its budget."""
    if cfg.params is None:
        return cfg
    from ..arch.budget import fit_budget

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
    saved = {**LEGACY, **_legacy_attack(saved), **saved}
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


def run(config: TrainConfig, max_epochs: int | None = None,
        log: Callable[[str], None] = print,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train (or resume) the run in ``config.out``. `max_epochs` caps the epochs done by this call
    (a time-sliced job); calling again continues where it stopped. `on_epoch` gets each epoch's
    record after its checkpoint is written (e.g. `dsara.utils.tensorboard`)."""
    cfg = config.resolved()
    with run_lock(cfg.out):  # one process per run directory, for this process's whole run
        return _run(cfg, max_epochs, log, on_epoch)


def _build(cfg: TrainConfig, previous: dict | None, info, device) -> tuple[dict, nn.Module]:
    """(model spec, model on `device`): a resumed run rebuilds its model from the checkpoint's
    spec, not from a file that may have moved; a new one initializes its weights."""
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
    return spec, model


def _record(state: dict[str, Any], record: dict[str, Any], cfg: TrainConfig,
            log: Callable[[str], None]) -> bool:
    """Add an epoch's record to the run state: the best epoch (by validation PGD accuracy), FGSM-RS'
    catastrophic-overfitting guard, epochs done. Returns whether this epoch is the new best."""
    prev = state["history"][-1]["val_robust"] if state["history"] else None
    state["history"].append(record)
    improved = record["val_robust"] > state["best"]["val_robust"]
    if improved:
        state["best"] = {"epoch": record["epoch"], "val_robust": record["val_robust"],
                         "val_clean": record["val_clean"]}
    if (cfg.method == "fgsm-rs" and prev is not None
            and prev - record["val_robust"] > cfg.overfit_guard):
        state["stopped_early"] = True
        log(f"catastrophic overfitting: val PGD accuracy fell from {100 * prev:.1f}% to "
            f"{100 * record['val_robust']:.1f}%; stopping, best.pt is from epoch "
            f"{state['best']['epoch']}")
    state["epoch"] = record["epoch"]
    return improved


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
    spec, model = _build(cfg, previous, info, device)
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
        improved = _record(state, record, cfg, log)
        _save(run_dir, cfg, spec, model, optimizer, scheduler, state, improved)
        log(_format(record, cfg.epochs))
        if on_epoch is not None:
            on_epoch(record)
        done += 1
    return TrainResult(run_dir, state["epoch"], state["best"]["epoch"],
                       max(state["best"]["val_robust"], 0.0), state["best"]["val_clean"],
                       state["stopped_early"], state["history"])






__all__ = ["METHODS", "TrainConfig", "TrainResult", "config_from_dict", "load_data", "read_config",
           "run"]
