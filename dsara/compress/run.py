"""`compress(CompressConfig) -> CompressResult`: a trained run in, a compressed run directory out.

The new run directory holds ``best.pt``, a dsara checkpoint whose model spec is
``{"kind": "compressed", "method": ..., "base": <the original spec>, "layers": {conv name:
structure}}`` (integers only, see `layers`), so ``dsara evaluate NEW_RUN_DIR`` rebuilds and
attacks it unchanged; ``compression.json`` holds the per-layer choices, parameters, multiply-adds,
clean and PGD accuracy on the run's validation split (held out of training; never the test set)
before and after, and the measured throughput table.

``lowrank`` is followed by a short robust fine-tune: ``compressed.pt`` (the factorised network) is
retrained by `dsara.train` with a named recipe in the same directory, which then also holds that
run's ``config.json``, ``last.pt`` and ``metrics.json``; the report says how much of the accuracy
lost to the factorisation the fine-tune recovered.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..arch.profile import count_macs, count_parameters
from ..data.loader import Loader
from ..errors import DsaraError
from ..train.checkpoint import load_checkpoint, save_checkpoint
from ..utils.device import resolve_device
from ..utils.files import write_json_atomic
from . import COMPRESSORS
from .throughput import BenchConfig, bench, describe, table

METHODS = tuple(COMPRESSORS)
# the source run's data settings the fine-tune keeps: same images, same held-out validation split
DATA_FIELDS = ("dataset", "data_root", "synthetic", "train_size", "val_size", "seed")


@dataclass
class CompressConfig:
    source: str  # a `dsara train` run directory (its best.pt) or a checkpoint file
    out: str  # the new run directory
    method: str = "gdws"  # gdws | lowrank
    # gdws lego: error budget beta per conv (default 0.005); gdws mego: fraction of each conv's
    # multiply-adds (0.5); lowrank: fraction of the network's params or MACs kept (0.5)
    budget: float | None = None
    algorithm: str = "lego"  # gdws: lego | mego
    budget_kind: str = "params"  # lowrank: params | macs
    n_images: int = 1000  # gdws: training images whose PGD examples weigh the error (alpha)
    finetune_recipe: str = "lowrank-ft"  # lowrank: the named recipe of the robust fine-tune
    finetune_epochs: int | None = None  # lowrank: None = the recipe's; 0 = no fine-tune
    finetune_overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    val_images: int | None = None  # validation images of the before/after figures; None = all
    bench: bool = True  # time original vs compressed (batches 1 and 256)
    bench_repeats: int = 5
    device: str = "auto"
    seed: int = 0

    def validate(self) -> CompressConfig:
        if self.method not in METHODS:
            raise DsaraError(f"unknown compression method {self.method!r}; methods: "
                             f"{', '.join(METHODS)}")
        if Path(self.out).resolve() == Path(self.source).resolve():
            raise DsaraError("--out must be a new run directory, not the source run")
        if (Path(self.out) / "best.pt").exists() and not COMPRESSORS[self.method].finetunes:
            raise DsaraError(f"{self.out} already holds a checkpoint; choose another --out")
        return self


@dataclass
class CompressResult:
    run_dir: Path
    report: dict[str, Any]


def _train_config(ckpt: dict[str, Any]):
    from ..train.config import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    raw = {k: v for k, v in (ckpt.get("config") or {}).items() if k in known}
    if "dataset" not in raw:
        raise DsaraError("the source checkpoint records no training config (dataset); compress "
                         "a checkpoint written by `dsara train`")
    return TrainConfig(**{**raw, "milestones": tuple(raw.get("milestones", (0.5, 0.75)))})


def accuracy(model: nn.Module, val, train_cfg, device, limit: int | None) -> dict[str, float]:
    """Clean and PGD accuracy on the validation split (the training run's own validation
    attack: eps, step eps/4, val_steps)."""
    from ..train.loop import validate

    if limit is not None:
        val = val.subset(torch.arange(min(limit, len(val))))
    loader = Loader(val, min(256, len(val)), shuffle=False, drop_last=False, device=device)
    return validate(model.to(device), loader, train_cfg)


def compress(cfg: CompressConfig, log: Callable[[str], None] = print) -> CompressResult:
    from ..train.checkpoint import load_trained
    from ..train.split import load_data

    cfg.validate()
    device = resolve_device(cfg.device)
    model, ckpt, path = load_trained(cfg.source)
    model = model.to(device).eval()
    train_cfg = _train_config(ckpt)
    fit, val, _test, info = load_data(train_cfg)
    input_size = tuple(fit.images.shape[1:])
    original = copy.deepcopy(model)
    log(f"compressing {path} ({count_parameters(model) / 1e6:.3f} M params) with {cfg.method}")
    method = COMPRESSORS[cfg.method]
    structure, layers, settings = method.apply(model, cfg, train_cfg, fit, input_size, device)
    log(layer_table(layers))
    if not structure:
        log("note: no conv was replaced (each compressed form would cost at least as many "
            "multiply-adds as the conv); give a larger --budget")
    spec = {"kind": "compressed", "method": cfg.method, "name": f"{cfg.method} of "
            f"{ckpt.get('model_spec', {}).get('name', '?')}", "base": ckpt["model_spec"],
            "layers": structure}
    out = Path(cfg.out)
    figures = {"original": _figures(original, val, train_cfg, device, cfg, input_size),
               "compressed": _figures(model, val, train_cfg, device, cfg, input_size)}
    config = {**train_cfg.to_dict(), "out": str(out)}
    state = {"model_spec": spec, "model": model.state_dict(), "config": config,
             "epoch": ckpt.get("epoch"), "compression": {"method": cfg.method, "source": str(path)}}
    final = model
    if method.finetunes and cfg.finetune_epochs != 0:
        save_checkpoint(out / "compressed.pt", state)
        final = finetune(out / "compressed.pt", cfg, train_cfg, log)
        figures["finetuned"] = _figures(final, val, train_cfg, device, cfg, input_size)
        figures["recovered"] = recovered(figures)
    else:
        save_checkpoint(out / "best.pt", state)
    report = {"method": cfg.method, "source": str(path), "settings": settings,
              "layers": layers, "figures": figures, "dataset": info.name}
    if cfg.bench:
        report["bench"] = _bench(original, final, cfg, device, input_size, log)
    write_json_atomic(out / "compression.json", report)
    log(_summary(figures))
    log(f"next: dsara evaluate {out}")
    return CompressResult(out, report)


def _figures(model, val, train_cfg, device, cfg: CompressConfig, input_size) -> dict[str, Any]:
    return {"params": count_parameters(model), "macs": count_macs(model, input_size),
            **accuracy(model, val, train_cfg, device, cfg.val_images)}


def recovered(figures: dict[str, Any]) -> dict[str, float | None]:
    """Share of the accuracy lost to the factorisation that the fine-tune won back (1 = all)."""
    out = {}
    for k in ("val_clean", "val_robust"):
        lost = figures["original"][k] - figures["compressed"][k]
        out[k] = (figures["finetuned"][k] - figures["compressed"][k]) / lost if lost > 0 else None
    return out


def finetune(compressed: Path, cfg: CompressConfig, train_cfg, log) -> nn.Module:
    """The named recipe's robust fine-tune of the factorised network, in cfg.out."""
    from ..train.config import config_from_dict
    from ..train.loop import run

    data = {k: getattr(train_cfg, k) for k in DATA_FIELDS if hasattr(train_cfg, k)}
    raw = {**data, "arch": str(compressed), "out": cfg.out, "recipe": cfg.finetune_recipe,
           "device": cfg.device, **cfg.finetune_overrides}
    if cfg.finetune_epochs is not None:
        raw["epochs"] = cfg.finetune_epochs
    result = run(config_from_dict(raw, "the fine-tune"), log=log)
    from ..train.checkpoint import load_model

    return load_model(load_checkpoint(result.run_dir / "best.pt"), "the fine-tuned network")


def _bench(original, compressed, cfg: CompressConfig, device, input_size, log) -> dict:
    bcfg = BenchConfig(repeats=cfg.bench_repeats, input_size=input_size)
    rows = bench({"original": original, cfg.method: compressed}, device, bcfg)
    log(f"\nthroughput ({describe(device, bcfg)}):\n{table(rows)}")
    return {"setup": describe(device, bcfg), "rows": [r.to_dict() for r in rows]}


def layer_table(layers: dict[str, dict]) -> str:
    lines = ["layer                          C x M x K      kept            MACs kept  replaced"]
    for name, r in layers.items():
        kept = f"G = {r['G']}" if "G" in r else f"ranks {r['ranks'][0]}, {r['ranks'][1]}"
        frac = r.get("macs_fraction", r.get("macs_fraction_layer"))
        geo = f"{r['C']} x {r['M']} x {r['kernel'][0]}"
        lines.append(f"{name:<30} {geo:<14} {kept:<15} "
                     f"{'' if frac is None else f'{100 * frac:.0f}%':>9}  "
                     f"{'yes' if r['replaced'] else 'no'}")
    return "\n".join(lines)


def _summary(figures: dict[str, Any]) -> str:
    lines = ["", "validation split      params      MACs   clean    PGD"]
    for k in ("original", "compressed", "finetuned"):
        if k in figures:
            f = figures[k]
            lines.append(f"{k:<18} {f['params'] / 1e6:8.3f} M {f['macs'] / 1e6:8.1f} M "
                         f"{100 * f['val_clean']:6.1f}% {100 * f['val_robust']:6.1f}%")
    if "recovered" in figures:
        r = figures["recovered"]
        fmt = {k: "n/a" if v is None else f"{100 * v:.0f}%" for k, v in r.items()}
        lines.append(f"the fine-tune recovered {fmt['val_clean']} of the clean and "
                     f"{fmt['val_robust']} of the PGD accuracy lost to the factorisation")
    return "\n".join(lines)
