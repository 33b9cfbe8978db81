"""The DSARA search loop: `run(config) -> SearchResult`.

Per step: PGD examples of the weight-train batch and of the arch-val batch; an alpha step (stage 1:
CE on the adversarial arch-val batch; stage 2: min-norm combination of g_nat and lam * g_adv); a
weight step on the adversarial weight-train batch. Per epoch: one record in metrics.jsonl, alpha in
alpha_history.jsonl, the derived architecture, then the checkpoint. Statistics stay on the device
during the epoch and are read once at its end.

Under `torchrun` the same loop runs data-parallel (see `distributed`): each rank steps on its slice
of every global batch with rank-averaged gradients; rank 0 writes the run directory.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..arch.archfile import Architecture, provenance, save_architecture
from ..arch.genotype import Genotype
from ..arch.space import SearchSpace, load_space
from ..arch.supernet import Supernet, check_partial_k
from ..data.datasets import SyntheticConfig, load_dataset
from ..data.loader import Loader
from ..data.split import split_train
from ..errors import DsaraError, Interrupted
from ..utils.device import resolve_device, use_bf16, use_channels_last
from ..utils.files import write_json_atomic
from ..utils.lock import run_lock
from ..utils.progress import Pace, bar, duration, rate_text, write
from ..utils.signals import sigterm_as_interrupt
from ..version import __version__
from . import distributed
from .config import SearchConfig, from_saved
from .distributed import Dist
from .resume import check_device, legacy_precision, rng_state, set_rng_state
from .rundir import RunDir
from .steps import adversarial, arch_step, make_unrolled, weight_step

# Options that may differ between the original run and `--resume` (they do not change results).
# `device` may move between GPUs; another device type is refused by resume.check_device.
RESUMABLE_CHANGES = {"device", "compile", "deterministic", "out", "data_root"}


@dataclass
class SearchResult:
    run_dir: Path
    architecture: Architecture
    history: list[dict[str, Any]]  # one record per epoch
    resumed_from: int | None = None  # epochs already done when this call started

    @property
    def genotype(self) -> Genotype:
        return self.architecture.genotype

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


class Search:
    """Everything a search holds: data, supernet, optimizers. `run()` drives it."""

    def __init__(self, cfg: SearchConfig, dist: Dist = Dist(), device: torch.device | None = None):
        self.cfg, self.dist = cfg, dist
        self.device = device or resolve_device(cfg.device)
        cuda = self.device.type == "cuda"
        self.space: SearchSpace = load_space(cfg.space, cfg.space_overrides)
        check_partial_k(self.space.proxy_macro(), cfg.partial_k)  # before loading any data
        synthetic = SyntheticConfig(**cfg.synthetic) if cfg.dataset == "synthetic" else None
        train, _, self.info = load_dataset(cfg.dataset, cfg.data_root, cfg.download,
                                           synthetic=synthetic)
        w_train, a_val = split_train(train, cfg.arch_fraction, cfg.data_seed)
        cl = use_channels_last(cfg.channels_last, self.device)
        shard = {"rank": dist.rank, "world_size": dist.world_size}  # batch_size is global
        self.train = Loader(w_train, cfg.batch_size, shuffle=True, augment=True,
                            device=self.device, seed=cfg.seed, channels_last=cl, **shard)
        self.val = Loader(a_val, cfg.batch_size, shuffle=True, augment=True,
                          device=self.device, seed=cfg.seed + 1, channels_last=cl, **shard)
        macro = self.space.proxy_macro(num_classes=self.info.num_classes, mean=self.info.mean,
                                       std=self.info.std)
        self.model = Supernet(macro, self.space.ops, cfg.partial_k, cfg.alpha_init_std)
        if dist.enabled and cfg.sync_bn:
            distributed.global_batchnorm(self.model)
        self.model.to(self.device, memory_format=torch.channels_last if cl else
                      torch.contiguous_format)
        dist.broadcast_(list(self.model.state_dict().values()))  # every rank starts as rank 0
        self.net = torch.compile(self.model) if cfg.compile else self.model
        self.weights = self.model.weight_parameters()
        # fused kernels on CUDA (one launch per step); the foreach path elsewhere
        opt_kw = {"fused": True} if cuda else {"foreach": True}
        self.w_opt = torch.optim.SGD(self.weights, cfg.lr, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay, **opt_kw)
        self.a_opt = torch.optim.Adam(self.model.arch_parameters(), cfg.arch_lr,
                                      betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay,
                                      **opt_kw)
        bf16 = use_bf16(cfg.precision, self.device)
        self.amp = lambda: torch.autocast(self.device.type, torch.bfloat16, enabled=bf16)
        self.steps = min(len(self.train), len(self.val), cfg.max_steps or math.inf)

    # -- one epoch ------------------------------------------------------------------------------
    def epoch(self, epoch: int, progress: Callable[[int, int], None]) -> dict[str, Any]:
        stage = 1 if epoch < self.cfg.stage1 else 2
        self.net.train()
        lr = search_lr(self.cfg, epoch)
        for group in self.w_opt.param_groups:
            group["lr"] = lr
        totals: dict[str, torch.Tensor] = {}
        start = time.perf_counter()
        batches = zip(self.train.epoch(epoch), self.val.epoch(epoch))
        for step, (batch_t, batch_v) in enumerate(batches):
            if step >= self.steps:
                break
            stats = self.step(batch_t, batch_v, stage)
            for k, v in stats.items():
                totals[k] = totals[k] + v.float() if k in totals else v.float()
            progress(step + 1, self.steps)
        self.dist.check_same(self.model.arch_parameters(), "alpha")
        seconds = time.perf_counter() - start
        return self.record(epoch, stage, totals, lr, seconds)

    def step(self, batch_t, batch_v, stage: int) -> dict[str, torch.Tensor]:
        """One search step on a weight-train and an arch-val batch (this rank's slices); returns
        device tensors (no host sync)."""
        cfg, model, d = self.cfg, self.net, self.dist
        (x_t, y_t), (x_v, y_v) = batch_t, batch_v
        # the weight-train PGD batch feeds PGD-AT's weight step and the unrolled (second-order) step
        x_t_adv = (adversarial(model, x_t, y_t, cfg, self.amp, d)
                   if cfg.weight_method == "pgd-at" or cfg.order == "second" else None)
        x_v_adv = adversarial(model, x_v, y_v, cfg, self.amp, d)
        unrolled = (make_unrolled(self.model, x_t_adv, y_t, self.w_opt, cfg, d)
                    if cfg.order == "second" else None)
        stats = arch_step(model, x_v, y_v, x_v_adv, stage, cfg, self.amp, self.a_opt, unrolled, d)
        stats |= weight_step(model, x_t_adv, y_t, self.w_opt, cfg, self.amp, self.weights, d, x_t)
        return stats

    def record(self, epoch, stage, totals, lr, seconds) -> dict[str, Any]:
        keys = sorted(totals)
        summed = self.dist.sum(torch.stack([totals[k] for k in keys]))  # counts: over all ranks
        values = dict(zip(keys, summed.tolist()))  # one sync
        for k in keys:
            if "correct" not in k:  # losses and gamma are means: average them over the ranks
                values[k] /= self.dist.world_size
        n, b = self.steps, self.cfg.batch_size
        genotype = self.model.genotype(self.cfg.skip_cap)
        return {
            "epoch": epoch + 1,
            "stage": stage,
            "lr_w": lr,
            "train_loss_adv": values["train_loss_adv"] / n,
            "train_acc_adv": (values["train_correct_adv"] / (n * b)  # None: weight_method
                              if "train_correct_adv" in values else None),  # made no PGD batch
            "val_clean_acc": values["val_correct_nat"] / (n * b),
            "val_pgd_acc": values["val_correct_adv"] / (n * b),
            "val_loss_nat": values["val_loss_nat"] / n,
            "val_loss_adv": values["val_loss_adv"] / n,
            "gamma_mean": (values["gamma"] / n if "gamma" in values
                           and not math.isnan(values["gamma"]) else None),
            "alpha_entropy": alpha_entropy(self.model),
            "param_free": {t: c.parameter_free() for t, c in genotype.cells.items()},
            "activation": self.model.derived_activation(),
            "genotype": genotype.to_dict(),
            "genotype_text": genotype.to_text(),
            "epoch_time_s": seconds,
            "images_per_s": 2 * n * b / seconds,  # weight-train + arch-val images
        }

    # -- state ----------------------------------------------------------------------------------
    def state(self, epochs_done: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "epoch": epochs_done,
            "step": 0,  # data position: checkpoints are taken at epoch boundaries
            "rng": rng_state(self.device),
            "device_type": self.device.type,  # a resume on another type is refused (resume.py)
            "config": self.cfg.to_dict(),
            "space": self.space.raw,
            "dsara_version": __version__,
        }

    def load_state(self, state: dict[str, Any], where: str = "the checkpoint") -> int:
        own, saved = set(self.model.state_dict()), set(state["model"])
        if own != saved:  # e.g. written before the space's `normalize` or PC-DARTS' beta existed
            diff = sorted(own ^ saved)
            raise DsaraError(f"{where} holds another supernet than the one this dsara builds for "
                             f"its space and config ({len(diff)} tensors differ, e.g. "
                             f"{diff[0]!r}); finish it with the dsara version that started it, "
                             "or start a new search")
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        set_rng_state(state["rng"], self.device)
        return int(state["epoch"])

    def architecture(self, epochs_done: int) -> Architecture:
        macro = self.space.final_macro(num_classes=self.info.num_classes, mean=self.info.mean,
                                       std=self.info.std)
        prov = provenance(source="search", space=self.space.name, epochs=epochs_done,
                          dataset=self.cfg.dataset, config=self.cfg.to_dict())
        # a searched activation becomes the derived one (the argmax of its beta per cell type)
        return Architecture(self.model.genotype(self.cfg.skip_cap), self.model.derived_macro(macro),
                            prov).validate()

    def pt_architecture(self, magnitude: Architecture, rd: RunDir | None) -> Architecture:
        """The finished search's cells chosen by perturbation (search/perturb.py, a labelled
        reconstruction of DARTS-PT); written over architecture.json, with every decision in
        pt_selection.json, by the process that owns the run directory (`rd`)."""
        from .perturb import select_for

        genotype, record = select_for(self.cfg, self.model)
        prov = {**magnitude.provenance, "selection": "pt (DARTS-PT reconstruction, no "
                "fine-tuning)", "magnitude_genotype": magnitude.genotype.to_dict()}
        arch = Architecture(genotype, magnitude.macro, prov).validate()
        if rd is not None:
            save_architecture(arch, rd.architecture)
            write_json_atomic(rd.path / "pt_selection.json", record)
        return arch

    def alphas(self) -> dict[str, list]:
        return {t: a.detach().float().cpu().tolist() for t, a in self.model.alphas.items()}


def run(config: SearchConfig, callbacks: Iterable[Callable[[dict[str, Any]], None]] = (),
        resume: bool = False, progress: bool | None = None, force: bool = False
        ) -> SearchResult:
    """Run (or, with resume=True, continue) a search; returns the derived architecture and history.

    Each callback is called with the epoch's record after its checkpoint is written; an exception
    it raises (e.g. a pruning signal) stops the search with the checkpoint intact. A resume on
    another device type than the checkpoint's is refused unless `force` (see `resume`).
    """
    rd = RunDir(config.out)
    cfg = resolve_resume(config, rd) if resume else config.validate()
    _check_new(rd, resume)
    # one process owns the run directory (rank 0 of a torchrun job: the only one that writes)
    with run_lock(rd.path) if distributed.from_env().main else contextlib.nullcontext():
        _check_new(rd, resume)  # again: another search may have started meanwhile
        seed_everything(cfg.seed, cfg.deterministic)
        device = resolve_device(cfg.device)
        # on the CPU, copied into place later; a run stopped before its first checkpoint
        # restarts from its start with its saved config
        state = rd.load_checkpoint() if resume and rd.checkpoint.exists() else None
        if state is not None:
            legacy_precision(state, cfg)
            check_device(state, cfg, device, force, str(rd.path))
        dist, device, created = distributed.setup(device)
        try:
            return _run(cfg, rd, Search(cfg, dist, device), callbacks, state, progress)
        finally:
            distributed.teardown(created)


def _check_new(rd: RunDir, resume: bool) -> None:
    if not resume and rd.has_search():
        raise DsaraError(f"{rd.path} already holds a search; continue it with --resume "
                         f"{rd.path} or choose another --out")


def _run(cfg: SearchConfig, rd: RunDir, search: Search, callbacks, state: dict | None,
         progress: bool | None) -> SearchResult:
    main = search.dist.main  # only rank 0 writes files and logs
    done, resumed_from = 0, None
    if state is not None:
        done = resumed_from = search.load_state(state, str(rd.checkpoint))
        if main:
            rd.truncate(done)
    elif main:
        rd.write_config(cfg.to_dict())
        rd.start_alpha_history(search.alphas())
    # without a terminal: plain progress lines of the whole run; after its first steps, the
    # projected wall time (once, on stdout, so it reaches the log)
    pace = Pace("search", (cfg.epochs - done) * search.steps,
                enabled=None if main and progress is not True else False)
    project_at = min(3, search.steps) if main else -1  # within the first epoch

    def on_step(steps) -> None:
        steps.update()
        pace.update()
        if pace.done == project_at:
            write(projection(cfg, search, done, pace.seconds_per_unit()))

    with sigterm_as_interrupt():
        for epoch in range(done, cfg.epochs):
            pace.what = f"search (epoch {epoch + 1}/{cfg.epochs})"
            try:
                with bar(total=search.steps, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                         unit="step", enabled=progress if main else False) as steps:
                    record = search.epoch(epoch, lambda i, n, b=steps: on_step(b))
            except KeyboardInterrupt:
                raise Interrupted(interrupted_message(epoch, rd.path)) from None
            check_finite(record, search, rd, epoch)
            if main:
                rd.append(record, search.alphas())
                save_architecture(search.architecture(epoch + 1), rd.architecture)
                rd.save_checkpoint(search.state(epoch + 1))
                log_epoch(record, cfg)
            for callback in callbacks:  # every rank: the record is the same (rank-reduced)
                callback(record)
    search.dist.barrier()  # rank 0 has written everything
    arch = search.architecture(cfg.epochs)
    if cfg.selection == "pt":  # opt-in: the cells chosen by perturbation, not by magnitude
        arch = search.pt_architecture(arch, rd if main else None)
    return SearchResult(rd.path, arch, rd.read_metrics(), resumed_from)


def projection(cfg: SearchConfig, search: Search, done: int, per_step: float) -> str:
    """The projected wall time of the (rest of the) search, from the steps measured so far."""
    epochs = cfg.epochs - done
    total = per_step * epochs * search.steps
    what = "the whole search" if done == 0 else f"the {epochs} epochs left"
    shorten = (" (it is days: shorten it with --epochs, --max-steps or a smaller dataset, or run "
               "it on a GPU)" if total >= 86400 else "")
    return (f"projected wall time of {what} on {search.device.type}: {epochs} epochs x "
            f"{search.steps} steps at {rate_text(1 / per_step, 'step')} = "
            f"{duration(total)}{shorten}")


def interrupted_message(epoch: int, path: Path) -> str:
    """What Ctrl-C in `epoch` (0-based) leaves, and the one command that continues it."""
    kept = (f"keeps the checkpoint of epoch {epoch}: continue" if epoch
            else "has no checkpoint yet (no epoch finished): restart it from its start")
    return f"interrupted in epoch {epoch + 1}; {path} {kept} with dsara search --resume {path}"


def resolve_resume(given: SearchConfig, rd: RunDir) -> SearchConfig:
    """The saved config of `rd`; options given now must match it, except harmless ones."""
    saved = from_saved(rd.read_config(), f"{rd.config}")
    explicit = getattr(given, "explicit", None)  # the command line marks what the user typed
    for key, value in given.to_dict().items():
        if key in RESUMABLE_CHANGES or (explicit is not None and key not in explicit):
            continue
        if saved.to_dict()[key] != value:
            raise DsaraError(f"{rd.path} was made with {key} = {saved.to_dict()[key]!r}, not "
                             f"{value!r}; resume it without changing {key}, or start a new "
                             "search with another --out")
    for key in RESUMABLE_CHANGES - {"out"}:
        setattr(saved, key, getattr(given, key))
    saved.out = str(rd.path)
    return saved


def search_lr(cfg: SearchConfig, epoch: int) -> float:
    """The weights' learning rate in 0-based `epoch`: cosine from lr to lr_min over the epochs,
    taken at epoch + lr_epoch_offset (1: the authors' scheduler stepped before each epoch)."""
    t = min(epoch + cfg.lr_epoch_offset, cfg.epochs) / cfg.epochs
    return cfg.lr_min + (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * t)) / 2


def check_finite(record, search: Search, rd: RunDir, epoch: int) -> None:
    losses = [record["train_loss_adv"], record["val_loss_nat"], record["val_loss_adv"]]
    alphas_ok = all(torch.isfinite(a).all() for a in search.model.arch_parameters())
    if not all(math.isfinite(v) for v in losses) or not alphas_ok:
        kept = (f"the last good checkpoint (epoch {epoch}) is kept in {rd.path}" if epoch
                else "no checkpoint was written")
        raise DsaraError(f"the loss became NaN or infinite in epoch {epoch + 1}; {kept}; "
                         "try a lower --lr or --arch-lr")


def alpha_entropy(model: Supernet) -> dict[str, float]:
    """Mean entropy (nats) of the op distribution per edge, per cell type; log(ops) = uniform."""
    out = {}
    for t, a in model.alphas.items():
        p = torch.softmax(a.detach().float(), dim=-1)
        out[t] = float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())
    return out


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)



def log_epoch(r: dict[str, Any], cfg: SearchConfig) -> None:
    gamma = f" gamma {r['gamma_mean']:.2f}" if r["gamma_mean"] is not None else ""
    free = " ".join(f"{t}:{n}" for t, n in r["param_free"].items())
    write(f"epoch {r['epoch']}/{cfg.epochs} stage {r['stage']} | arch-val clean "
          f"{r['val_clean_acc']:.3f} pgd {r['val_pgd_acc']:.3f} | train adv loss "
          f"{r['train_loss_adv']:.3f}{gamma} | param-free {free} | "
          f"{r['images_per_s']:.0f} img/s, {r['epoch_time_s']:.1f} s")
