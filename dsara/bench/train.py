"""Benchmark of one adversarial training step and one PGD-20 evaluation batch, optimized path
against a plain-PyTorch reference path, side by side in one process.

- optimized: what `dsara train` / `dsara evaluate` run (`dsara.train.loop.train_step`, the
  method registry, `dsara.attacks.gradient.pgd`): data resident on the device as uint8 with on-device
  augmentation (`Loader`), bf16 autocast with fp32 master weights and channels_last where
  `precision` / `channels_last` turn them on (auto: on CUDA), fused SGD on CUDA (foreach on a
  CPU), attack gradients taken for the input only (`autograd.grad`), no host sync in the step.
- reference: the way the public AdvRush / ARNAS / TRADES retraining code writes it: fp32,
  contiguous NCHW, a `torch.utils.data.DataLoader` over CPU images with per-sample torchvision
  transforms, `.to(device)` every step, PGD by `loss.backward()` into every parameter (PGD-AT),
  TRADES' own inner loop (the clean forward recomputed at every step), default `torch.optim.SGD`,
  per-step `.item()` logging.

Both paths train the same architecture from the same weights with the same objective (the
auxiliary head included), so a training step does the same arithmetic; `tests/test_bench_train.py`
checks that their loss trajectories agree in fp32. Times are per step after `warmup` untimed
steps, the paths of a case taken in turns (`round_robin`) so that load changes on a shared machine
hit them alike: CUDA events on a GPU, `perf_counter` on a CPU. The projection is the 200-epoch reference
retraining recipe on CIFAR-10 (50,000 training images per epoch, as the authors train).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arch.build import build_model
from ..attacks.gradient import pgd
from ..data.datasets import SyntheticConfig, load_dataset
from ..data.loader import Loader
from ..errors import DsaraError
from ..train.loop import train_step
from ..train.losses import AdvParams
from ..train.methods import get_method
from ..utils.device import cpu_has_bf16, fp32_math, resolve_device, use_bf16, use_channels_last
from .common import (
    _AugmentedImages,
    _cycle,
    device_name,
    endless,
    peak_mb,
    publish,
    round_robin,
    top_ops,
    top_ops_lines,
)

# model -> (architecture, cells, channels, image side); "full" are the sizes of issue #16 /
# the papers (ARNAS at C=36 with 20 cells, ResNet-18 on 32x32), "small" run in seconds on a CPU.
MODELS = {
    "full": {"arnas": ("ARNAS", 20, 36, 32), "resnet18": ("resnet18", None, None, 32)},
    "small": {"arnas": ("ARNAS", 8, 8, 32), "resnet18": ("resnet_tiny", None, None, 32)},
}
METHODS = ("pgd-at", "trades")
TRAIN_IMAGES = 50_000  # CIFAR-10 training images per retraining epoch (reference recipe)
EPOCHS = 200  # reference retraining recipe: 200 epochs
EVAL_IMAGES = 10_000  # CIFAR-10 test split


@dataclass
class TrainBenchConfig:
    device: str = "auto"
    size: str = "full"  # full | small (see MODELS)
    models: list[str] = field(default_factory=lambda: ["arnas", "resnet18"])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    batches: list[int] = field(default_factory=lambda: [128])
    precisions: list[str] = field(default_factory=lambda: ["auto"])  # optimized path, each
    channels_last: str = "auto"  # optimized path: auto (on CUDA) | on | off
    pgd_steps: int = 10  # inner attack steps (dsara's default recipe; ARNAS': 7)
    eval_steps: int = 20  # PGD-20 evaluation batch
    steps: int = 5  # timed steps per case
    warmup: int = 2  # untimed steps first
    compile: bool = False  # torch.compile the optimized path's model
    reference: bool = True  # also time the reference path
    evaluation: bool = True  # also time one PGD-20 evaluation batch
    profile: int = 0  # > 0: torch.profiler's top N ops of one optimized training step per case
    seed: int = 0

    def validate(self) -> TrainBenchConfig:
        if self.size not in MODELS:
            raise DsaraError(f"size must be one of {', '.join(MODELS)}, got {self.size!r}")
        unknown = [m for m in self.models if m not in MODELS[self.size]]
        if unknown:
            raise DsaraError(f"unknown model {unknown[0]!r}; models: {', '.join(MODELS['full'])}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise DsaraError(f"method {bad[0]!r} is not benchmarked; methods: {', '.join(METHODS)}")
        if self.steps < 1 or self.warmup < 0 or not self.batches or min(self.batches) < 1:
            raise DsaraError("need steps >= 1, warmup >= 0 and batches >= 1")
        return self


# ----------------------------------------------------------------------------- models and data

def make_model(bc: TrainBenchConfig, model: str) -> nn.Module:
    arch, cells, channels, _ = MODELS[bc.size][model]
    torch.manual_seed(bc.seed)
    if cells is None:
        return build_model(arch)
    return build_model(arch, cells=cells, channels=channels)


def bench_data(bc: TrainBenchConfig, model: str, batch: int):
    side = MODELS[bc.size][model][3]
    n = 2 * max(batch, 64)
    train, test, _ = load_dataset("synthetic", synthetic=SyntheticConfig(
        n_train=n, n_test=max(batch, 16), image_size=side))
    return train, test


def adv_params(bc: TrainBenchConfig, model: nn.Module) -> AdvParams:
    aux = model.macro.auxiliary_weight if getattr(model, "has_auxiliary", False) else 0.0
    return AdvParams(eps=8 / 255, step_size=2 / 255, steps=bc.pgd_steps, aux_weight=aux)



# ----------------------------------------------------------------------------- the paths

class OptimizedTrainStep:
    """dsara's own training step (`train_step`) on its device-resident data pipeline."""

    name = "optimized"

    def __init__(self, model: nn.Module, data, batch: int, method: str, params: AdvParams,
                 device: torch.device, precision: str = "auto", channels_last: str = "auto",
                 compile: bool = False):
        self.device, self.params = device, params
        self.bf16 = use_bf16(precision, device)
        cl = use_channels_last(channels_last, device)
        self.dtype, self.layout = ("bf16 autocast" if self.bf16 else "fp32"), (
            "channels_last" if cl else "NCHW")
        fmt = torch.channels_last if cl else torch.contiguous_format
        self.model = model.to(device, memory_format=fmt).train()
        self.net = torch.compile(self.model) if compile else self.model
        fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
        self.opt = torch.optim.SGD(self.model.parameters(), 0.1, momentum=0.9,
                                   weight_decay=1e-4, **fast)
        self.method = get_method(method).fn
        self.gen = torch.Generator(device).manual_seed(0)
        self.batches = (endless(Loader(data, batch, augment=True, device=device,
                                        channels_last=cl)) if data is not None else None)

    def amp(self):
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss, _ = train_step(self.net, x, y, self.method, self.params, self.opt, 5.0, self.gen,
                             self.amp)
        return loss

    def __call__(self, _stage: int = 0) -> None:
        self.step(*next(self.batches))


class ReferenceTrainStep:
    """The same training step the way the public AdvRush/ARNAS/TRADES code writes it."""

    name = "reference"
    dtype, layout = "fp32", "NCHW"

    def __init__(self, model: nn.Module, data, batch: int, method: str, params: AdvParams,
                 device: torch.device, workers: int | None = None):
        self.device, self.params, self.method = device, params, method
        self.model = model.to(device).train()
        self.opt = torch.optim.SGD(self.model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
        self.gen = torch.Generator(device).manual_seed(0)
        self.log: list[float] = []
        self.batches = None
        if data is not None:
            cuda = device.type == "cuda"
            workers = (2 if cuda else 0) if workers is None else workers
            self.batches = _cycle(torch.utils.data.DataLoader(
                _AugmentedImages(data), batch_size=batch, shuffle=True, drop_last=True,
                pin_memory=cuda, num_workers=workers, persistent_workers=workers > 0))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model, p = self.model, self.params
        if self.method == "trades":
            model.eval()
            x_adv = reference_trades_attack(model, x, p, self.gen)
            model.train()
        else:
            x_adv = reference_pgd(model, x, y, p.eps, p.step_size, p.steps, self.gen)
        self.opt.zero_grad()
        loss = self._loss(x, x_adv, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        self.opt.step()
        self.log.append(loss.item())  # per-step logging (AvgrageMeter.update)
        return loss.detach()

    def _loss(self, x, x_adv, y) -> torch.Tensor:
        p = self.params
        logits, aux = self.model(x_adv, return_aux=True) if _has_aux(self.model) else (
            self.model(x_adv), None)
        if self.method == "trades":
            natural = F.cross_entropy(self.model(x), y)
            kl = F.kl_div(F.log_softmax(logits, 1), F.softmax(self.model(x), 1),
                          reduction="sum") / len(x)
            loss = natural + p.beta * kl
        else:
            loss = F.cross_entropy(logits, y)
        if aux is not None and p.aux_weight > 0:
            loss = loss + p.aux_weight * F.cross_entropy(aux, y)
        return loss

    def __call__(self, _stage: int = 0) -> None:
        x, y = next(self.batches)
        self.step(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))


def _has_aux(model: nn.Module) -> bool:
    return bool(getattr(model, "has_auxiliary", False))


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x, return_aux=True)[0] if _has_aux(model) and model.training else model(x)


def reference_pgd(model, x, y, eps, alpha, steps, generator=None):
    """PGD as the public AdvRush/ARNAS code writes it: `backward()` into every parameter too.
    (The uniform start is drawn from `generator` like `dsara.attacks.gradient.pgd`, so a test can give
    both paths the same start.)"""
    noise = torch.rand(x.shape, generator=generator, device=x.device)
    delta = ((x + (2 * noise - 1) * eps).clamp(0, 1) - x).detach()
    delta.requires_grad = True
    for _ in range(steps):
        # DARTS' NetworkCIFAR runs its auxiliary head on every training-mode forward
        F.cross_entropy(_logits(model, x + delta), y).backward()
        delta.data = (delta.data + alpha * delta.grad.sign()).clamp(-eps, eps)
        delta.data = (x + delta.data).clamp(0, 1) - x
        delta.grad.zero_()
    return (x + delta).detach()


def reference_trades_attack(model, x, p: AdvParams, generator=None):
    """TRADES' inner loop as Zhang et al.'s `trades.py` writes it: start at x + 0.001 N(0, 1), the
    KL to the clean prediction recomputed (a clean forward) at every step."""
    x_adv = x.detach() + 0.001 * torch.randn(x.shape, generator=generator, device=x.device)
    for _ in range(p.steps):
        x_adv.requires_grad_()
        loss_kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1),
                           reduction="sum")
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + p.step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - p.eps), x + p.eps).clamp(0, 1)
    return x_adv.detach()


class EvalBatch:
    """One PGD-20 evaluation batch: dsara's `pgd` in eval mode and fp32 (what `dsara evaluate`
    runs) or the reference PGD that back-propagates into every parameter."""

    def __init__(self, path: str, model: nn.Module, test, batch: int, steps: int,
                 device: torch.device):
        self.name, self.device, self.steps = path, device, steps
        self.dtype, self.layout = "fp32", "NCHW"
        self.model = model.to(device).eval()
        self.x = test.images[:batch].float().div(255).to(device)
        self.y = test.labels[:batch].to(device)
        self.gen = torch.Generator(device).manual_seed(0)

    def __call__(self, _stage: int = 0) -> None:
        if self.name == "optimized":
            x_adv = pgd(self.model, self.x, self.y, 8 / 255, 2 / 255, self.steps,
                        generator=self.gen)
            with torch.no_grad():
                (self.model(x_adv).argmax(1) == self.y).sum()
        else:
            x_adv = reference_pgd(self.model, self.x, self.y, 8 / 255, 2 / 255, self.steps)
            self.model.zero_grad()
            with torch.no_grad():
                (self.model(x_adv).argmax(1) == self.y).sum().item()


# ----------------------------------------------------------------------------- timing

def _case(kind, model, method, path, batch, ms: list[float], peak, precision="-"):
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    median = statistics.median(ms)
    return {"kind": kind, "model": model, "method": method, "path": path.name, "batch": batch,
            "dtype": path.dtype, "layout": path.layout, "precision": precision,
            "ms_median": median, "ms_q1": q[0], "ms_q3": q[2], "ms_mean": statistics.fmean(ms),
            "images_per_s": batch / (median / 1e3), "peak_mem_mb": peak}


def _measure(kind, name, method, batch, paths: list[tuple[Any, str]], bc, device):
    times = round_robin([p for p, _ in paths], bc.warmup, bc.steps, device)
    return [_case(kind, name, method, path, batch, ms, peak_mb(path, device), precision)
            for (path, precision), ms in zip(paths, times)]


def _train_paths(bc, name, method, batch, device) -> list[tuple[Any, str]]:
    base = make_model(bc, name)
    train, _ = bench_data(bc, name, batch)
    params = adv_params(bc, base)
    paths: list[tuple[Any, str]] = [
        (OptimizedTrainStep(copy.deepcopy(base), train, batch, method, params, device, precision,
                            bc.channels_last, bc.compile), precision)
        for precision in bc.precisions]
    if bc.reference:
        paths.append((ReferenceTrainStep(copy.deepcopy(base), train, batch, method, params,
                                         device), "-"))
    return paths


def run_bench(bc: TrainBenchConfig) -> dict[str, Any]:
    """Time every (model, method, batch, path); returns the JSON-ready report."""
    bc.validate()
    device = resolve_device(bc.device)
    torch.backends.cudnn.benchmark = True
    cases = []
    for name in bc.models:
        for batch in bc.batches:
            for method in bc.methods:
                paths = _train_paths(bc, name, method, batch, device)
                measured = _measure("train", name, method, batch, paths, bc, device)
                for case, (path, _) in zip(measured, paths):
                    if bc.profile and path.name == "optimized":
                        case["top_ops"] = top_ops(path, device, bc.profile)
                cases += measured
                del paths
            if bc.evaluation:
                cases += _eval_cases(bc, name, batch, device)
    return {"device": device_name(device), "cpu": platform.processor() or platform.machine(),
            "cpu_bf16": cpu_has_bf16(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "config": asdict(bc), "cases": cases,
            "summary": summarize(cases)}


def _eval_cases(bc, name, batch, device) -> list[dict[str, Any]]:
    base = make_model(bc, name)
    _, test = bench_data(bc, name, batch)
    names = ("optimized", "reference") if bc.reference else ("optimized",)
    with fp32_math():  # evaluation is fp32
        paths = [(EvalBatch(n, copy.deepcopy(base), test, min(batch, len(test)), bc.eval_steps,
                            device), "-") for n in names]
        return _measure("eval", name, f"pgd{bc.eval_steps}", len(paths[0][0].y), paths, bc,
                        device)


def summarize(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (kind, model, method, batch, optimized precision): speed-up over the reference and
    projected hours (training: the 200-epoch recipe; evaluation: the 10k test split)."""
    out = []
    for c in cases:
        if c["path"] != "optimized":
            continue
        ref = next((r for r in cases if r["path"] == "reference" and all(
            r[k] == c[k] for k in ("kind", "model", "method", "batch"))), None)
        images = TRAIN_IMAGES * EPOCHS if c["kind"] == "train" else EVAL_IMAGES
        row = {k: c[k] for k in ("kind", "model", "method", "batch", "dtype", "layout")}
        row["speedup"] = c["images_per_s"] / ref["images_per_s"] if ref else None
        row["optimized_hours"] = images / c["images_per_s"] / 3600
        row["reference_hours"] = images / ref["images_per_s"] / 3600 if ref else None
        out.append(row)
    return out


# ----------------------------------------------------------------------------- report

def markdown(report: dict[str, Any]) -> str:
    bc = report["config"]
    lines = [f"Device: {report['device']}; torch {report['torch']}; CPU bf16 instructions: "
             f"{'yes' if report['cpu_bf16'] else 'no'}; size {bc['size']}; training PGD-"
             f"{bc['pgd_steps']}; {bc['steps']} timed steps after {bc['warmup']} warm-up; "
             "median (IQR).", "",
             "| kind | model | method | path | batch | dtype | layout | ms/step | images/s | "
             "peak MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cases"]:
        peak = "n/a" if c["peak_mem_mb"] is None else f"{c['peak_mem_mb']:.0f}"
        lines.append(f"| {c['kind']} | {c['model']} | {c['method']} | {c['path']} | "
                     f"{c['batch']} | {c['dtype']} | {c['layout']} | {c['ms_median']:.1f} "
                     f"({c['ms_q1']:.1f}-{c['ms_q3']:.1f}) | {c['images_per_s']:.1f} | {peak} |")
    lines += ["", "| kind | model | method | batch | optimized dtype | speed-up | hours, optimized "
              "| hours, reference |", "|---|---|---|---|---|---|---|---|"]
    for r in report["summary"]:
        su = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        ref = "-" if r["reference_hours"] is None else f"{r['reference_hours']:.2f}"
        lines.append(f"| {r['kind']} | {r['model']} | {r['method']} | {r['batch']} | "
                     f"{r['dtype']} | {su} | {r['optimized_hours']:.2f} | {ref} |")
    lines += top_ops_lines(report["cases"], lambda c: f"{c['model']} {c['method']} batch "
                           f"{c['batch']} {c['dtype']}")
    lines.append("")
    lines.append(f"Hours: training = {EPOCHS} epochs of {TRAIN_IMAGES:,} images (the reference "
                 f"retraining recipe); evaluation = one PGD-{bc['eval_steps']} pass over "
                 f"{EVAL_IMAGES:,} test images.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_train", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--size", default="full", choices=list(MODELS),
                   help="full: ARNAS C=36 20 cells and ResNet-18 on 32x32; small: ARNAS C=8 "
                   "8 cells and resnet_tiny (CPU smoke runs)")
    p.add_argument("--model", action="append", choices=list(MODELS["full"]),
                   help="repeatable (default arnas and resnet18)")
    p.add_argument("--method", action="append", choices=list(METHODS),
                   help="repeatable (default pgd-at and trades)")
    p.add_argument("--batch", type=int, action="append", help="images per step; repeatable "
                   "(default 128)")
    p.add_argument("--precision", action="append", choices=["auto", "fp32", "bf16"],
                   help="optimized path's precision; repeatable to compare (default auto)")
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--pgd-steps", type=int, default=10, help="training attack steps (default 10)")
    p.add_argument("--eval-steps", type=int, default=20, help="evaluation PGD steps (default 20)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per case (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--compile", action="store_true", help="torch.compile the optimized model")
    p.add_argument("--no-reference", action="store_true", help="skip the reference path")
    p.add_argument("--no-eval", action="store_true", help="skip the PGD-20 evaluation batch")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also list torch.profiler's top N ops of one optimized step")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    args = p.parse_args(argv)
    bc = TrainBenchConfig(
        device=args.device, size=args.size, models=args.model or ["arnas", "resnet18"],
        methods=args.method or list(METHODS), batches=args.batch or [128],
        precisions=args.precision or ["auto"], channels_last=args.channels_last,
        pgd_steps=args.pgd_steps, eval_steps=args.eval_steps, steps=args.steps,
        warmup=args.warmup, compile=args.compile, reference=not args.no_reference,
        evaluation=not args.no_eval, profile=args.profile)
    try:
        report = run_bench(bc)
    except DsaraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return publish(report, "bench_train.py", argv, markdown(report), args.json, args.markdown)


__all__ = ["TrainBenchConfig", "run_bench", "main", "OptimizedTrainStep", "ReferenceTrainStep",
           "reference_pgd", "reference_trades_attack"]
