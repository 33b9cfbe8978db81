"""Benchmark of one DSARA search step, optimized path against a plain-PyTorch reference path.

Both paths run the same step in the same process: PGD on a weight-train and an arch-val batch, the
alpha step of the stage (stage 1: CE of the adversarial arch-val batch; stage 2: min-norm of g_nat
and lam * g_adv) and the SGD weight step, on the same `Supernet`.

- optimized: `dsara.search.loop.Search.step`, the code a search runs: data resident on the device
  as uint8 with on-device augmentation, bf16 autocast with fp32 master weights and alpha and
  channels_last on CUDA, fused optimizers on CUDA, gradients taken only for what is updated, no
  host sync in the step, optional `torch.compile`.
- reference: written the way the public DARTS-family search code does it (`ReferenceStep`): fp32,
  contiguous NCHW, a `torch.utils.data.DataLoader` over CPU images with per-sample augmentation,
  batches moved to the device every step, `loss.backward()` into every parameter (PGD and the alpha
  step included), the min-norm gamma on Python floats, per-step `.item()` logging, no compile.

Times are per step after `warmup` steps, the paths taken in turns (one step of each per round, so
load changes on a shared machine hit them alike): CUDA events on a GPU, `perf_counter` on a CPU. A step
consumes `2 * batch` images (a weight-train and an arch-val batch). A CIFAR-10 search epoch is
25,000 / batch steps (the weight-train half; the arch-val half is consumed alongside), and the
projected search is `EPOCHS` epochs split into the stages as the default schedule splits them.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..arch.space import load_space
from ..arch.supernet import Supernet
from ..data.datasets import load_dataset
from ..data.split import split_train
from ..errors import DsaraError
from ..search import SearchConfig
from ..search.config import default_stage1
from ..search.loop import Search
from ..utils.device import resolve_device, use_bf16
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

# proxy: the reference search proxy (dsara space: C=24, 8 cells) on CIFAR-10-shaped inputs;
# small: the tiny space on 16x16 inputs, seconds on a CPU (smoke runs, CI).
# size -> (space, image size, space overrides): the reference proxy; the tiny space; and the
# CPU-sized proxy of experiments/cifar10-cpu.toml (dsara space, C = 8, 5 cells, 16x16 inputs)
SIZES = {"proxy": ("dsara", 32, {}), "small": ("tiny", 16, {}),
         "cpu16": ("dsara", 16, {"proxy.C": 8, "stages.0.depth": 1, "stages.1.depth": 1,
                                 "stages.2.depth": 1})}


TRAIN_IMAGES = 25_000  # weight-train images per CIFAR-10 search epoch (half of the 50k split)


EPOCHS = 50  # reference search length; stage 1 is its first default_stage1(50) = 21 epochs


BASE_BATCH = 32  # the reference batch; larger batches scale the weight lr linearly


@dataclass
class BenchConfig:
    device: str = "auto"
    batches: list[int] = field(default_factory=lambda: [32, 256])
    steps: int = 10  # timed steps per (path, batch, stage)
    warmup: int = 3  # untimed steps first (cuDNN autotuning, compilation, allocator)
    size: str = "proxy"  # proxy | small
    partial_k: list[int] = field(default_factory=lambda: [1])  # optimized path, each K
    compile: bool = False  # torch.compile the optimized path's supernet
    precisions: list[str] = field(default_factory=lambda: ["auto"])  # optimized path, each
    # alpha-gradient orders of the optimized path, each; the reference path is first order (plain
    # DARTS code), so speed-ups are against the optimized first-order step
    orders: list[str] = field(default_factory=lambda: ["first"])
    profile: int = 0  # > 0: torch.profiler's top N ops of one optimized step per stage
    stages: list[int] = field(default_factory=lambda: [1, 2])
    pgd_steps: int = 7  # reference: 7
    reference: bool = True  # also time the reference path (at partial_k 1)
    workers: int | None = None  # reference DataLoader workers; None: 2 on CUDA (DARTS), 0 on CPU
    seed: int = 0

    def validate(self) -> BenchConfig:
        if self.size not in SIZES:
            raise DsaraError(f"size must be one of {', '.join(SIZES)}, got {self.size!r}")
        if self.steps < 1 or self.warmup < 0 or not self.batches or min(self.batches) < 1:
            raise DsaraError("need steps >= 1, warmup >= 0 and batches >= 1")
        if not set(self.stages) <= {1, 2} or not self.stages:
            raise DsaraError(f"stages must be 1 and/or 2, got {self.stages}")
        return self

    def search_config(self, batch: int, partial_k: int, precision: str = "auto",
                      order: str = "first") -> SearchConfig:
        space, image_size, overrides = SIZES[self.size]
        n = 2 * max(batch, 64)  # images per half; batches are drawn endlessly from it
        return SearchConfig(
            space=space, space_overrides=dict(overrides), dataset="synthetic",
            partial_k=partial_k, batch_size=batch,
            synthetic={"n_train": 2 * n, "n_test": 16, "image_size": image_size},
            lr=0.025 * batch / BASE_BATCH, pgd_steps=self.pgd_steps, epochs=EPOCHS,
            device=self.device, compile=self.compile, seed=self.seed, precision=precision,
            order=order, out="unused").validate()



class OptimizedStep:
    """The search's own step (`Search.step`) on its own data pipeline."""

    name = "optimized"

    def __init__(self, cfg: SearchConfig):
        self.search = Search(cfg)
        self.search.net.train()
        self.device = self.search.device
        self.train, self.val = endless(self.search.train), endless(self.search.val)
        self.dtype = "bf16 autocast" if use_bf16(cfg.precision, self.device) else "fp32"
        self.layout = "channels_last" if self.search.train.channels_last else "NCHW"
        self.order = cfg.order

    def __call__(self, stage: int) -> None:
        self.search.step(next(self.train), next(self.val), stage)

    def saved_bytes(self) -> int:
        x, y = next(self.val)
        with self.search.amp():
            return saved_activation_bytes(self.search.model, x, y)


class ReferenceStep:
    """The same step the way the public DARTS-family search code writes it (see module doc)."""

    name = "reference"
    dtype, layout = "fp32", "NCHW"

    def __init__(self, cfg: SearchConfig, workers: int | None = None):
        self.cfg, self.device = cfg, resolve_device(cfg.device)
        cuda = self.device.type == "cuda"
        space = load_space(cfg.space, cfg.space_overrides)
        train, _, info = load_dataset("synthetic", synthetic=_synthetic(cfg))
        macro = space.proxy_macro(num_classes=info.num_classes, mean=info.mean, std=info.std)
        self.model = Supernet(macro, space.ops, cfg.partial_k, cfg.alpha_init_std).to(self.device)
        self.model.train()
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), cfg.lr,
                                     momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.a_opt = torch.optim.Adam(self.model.arch_parameters(), cfg.arch_lr,
                                      betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay)
        workers = (2 if cuda else 0) if workers is None else workers
        kw = dict(batch_size=cfg.batch_size, shuffle=True, drop_last=True, pin_memory=cuda,
                  num_workers=workers, persistent_workers=workers > 0)
        halves = split_train(train, cfg.arch_fraction, cfg.data_seed)
        self.train, self.val = (_cycle(torch.utils.data.DataLoader(_AugmentedImages(h), **kw))
                                for h in halves)
        self.log: list[float] = []

    def _next(self, queue):
        x, y = next(queue)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def __call__(self, stage: int) -> None:
        cfg, model = self.cfg, self.model
        x_t, y_t = self._next(self.train)
        x_v, y_v = self._next(self.val)
        x_t_adv = _reference_pgd(model, x_t, y_t, cfg.eps, cfg.step_size, cfg.pgd_steps)
        x_v_adv = _reference_pgd(model, x_v, y_v, cfg.eps, cfg.step_size, cfg.pgd_steps)
        self._arch_step(x_v, y_v, x_v_adv, stage)
        self.w_opt.zero_grad()
        logits = model(x_t_adv)
        loss = F.cross_entropy(logits, y_t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.weight_parameters(), cfg.grad_clip)
        self.w_opt.step()
        accuracy = (logits.argmax(1) == y_t).float().mean()
        self.log += [loss.item(), accuracy.item()]  # per-step logging (AvgrageMeter.update)

    def _arch_step(self, x_v, y_v, x_v_adv, stage: int) -> None:
        alphas = self.model.arch_parameters()
        self.a_opt.zero_grad()
        if stage == 1:
            F.cross_entropy(self.model(x_v_adv), y_v).backward()
            self.a_opt.step()
            return
        F.cross_entropy(self.model(x_v), y_v).backward()
        g_nat = [a.grad.clone() for a in alphas]
        self.a_opt.zero_grad()
        (self.cfg.lam * F.cross_entropy(self.model(x_v_adv), y_v)).backward()
        g_adv = [a.grad.clone() for a in alphas]
        gamma = _min_norm_on_floats(g_nat, g_adv)
        for a, g1, g2 in zip(alphas, g_nat, g_adv):
            a.grad = gamma * g1 + (1 - gamma) * g2
        self.a_opt.step()

    def saved_bytes(self) -> int:
        x, y = self._next(self.val)
        return saved_activation_bytes(self.model, x, y)


def _synthetic(cfg: SearchConfig) -> Any:
    from ..data.datasets import SyntheticConfig
    return SyntheticConfig(**cfg.synthetic)


def _reference_pgd(model, x, y, eps, alpha, steps):
    """PGD as the public AdvRush/DSARA code writes it: backward() into every parameter too."""
    delta = torch.zeros_like(x).uniform_(-eps, eps)
    delta.data = (x + delta.data).clamp(0, 1) - x
    delta.requires_grad = True
    for _ in range(steps):
        F.cross_entropy(model(x + delta), y).backward()
        delta.data = (delta.data + alpha * delta.grad.sign()).clamp(-eps, eps)
        delta.data = (x + delta.data).clamp(0, 1) - x
        delta.grad.zero_()
    return (x + delta).detach()


def _min_norm_on_floats(g1: list[torch.Tensor], g2: list[torch.Tensor]) -> float:
    """Two-task min-norm gamma from Python-float dot products (MinNormSolver._min_norm_element_from2)."""
    v11 = sum((a * a).sum() for a in g1).item()
    v12 = sum((a * b).sum() for a, b in zip(g1, g2)).item()
    v22 = sum((b * b).sum() for b in g2).item()
    if v12 >= v11:
        return 0.999
    if v12 >= v22:
        return 0.001
    return -1.0 * ((v12 - v22) / (v11 + v22 - 2 * v12))


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of one forward + CE (distinct storages): the
    activation memory of a pass, measurable on any device."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.device)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x).float(), y)
    return sum(seen.values())


def _case(path, batch: int, k: int, stage: int, ms: list[float], peak, bc) -> dict[str, Any]:
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    median = statistics.median(ms)
    return {"path": path.name, "batch": batch, "partial_k": k, "stage": stage,
            "dtype": path.dtype, "layout": path.layout, "order": getattr(path, "order", "first"),
            "compile": bc.compile and path.name == "optimized",
            "ms_median": median, "ms_q1": q[0], "ms_q3": q[2], "ms_mean": statistics.fmean(ms),
            "ms_std": statistics.stdev(ms) if len(ms) > 1 else 0.0,
            "images_per_s": 2 * batch / (median / 1e3), "peak_mem_mb": peak}


def _bench_paths(paths: list, bc: BenchConfig, batch: int, k: int) -> list[dict[str, Any]]:
    """Every stage of every path, the paths taken in turns (see `round_robin`)."""
    cases = []
    for stage in bc.stages:
        steps = [lambda p=p, s=stage: p(s) for p in paths]
        times = round_robin(steps, bc.warmup, bc.steps, paths[0].device)
        for path, step, ms in zip(paths, steps, times):
            cases.append(_case(path, batch, k, stage, ms, peak_mb(step, path.device), bc))
            if bc.profile and path.name == "optimized":
                cases[-1]["top_ops"] = top_ops(step, path.device, bc.profile)
    for path in paths:
        saved = path.saved_bytes() / 2**20
        for c in cases:
            if c["path"] == path.name and c["dtype"] == path.dtype:
                c["saved_activations_mb"] = saved
    return cases


def run_bench(bc: BenchConfig) -> dict[str, Any]:
    """Time every (path, batch, partial_k, stage); returns the JSON-ready report."""
    bc.validate()
    device = resolve_device(bc.device)
    torch.manual_seed(bc.seed)
    torch.backends.cudnn.benchmark = True
    cases = []
    for batch in bc.batches:
        for k in bc.partial_k:
            cfg = bc.search_config(batch, k)
            paths = [lambda c=bc.search_config(batch, k, p, o): OptimizedStep(c)
                     for o in bc.orders for p in bc.precisions]
            if bc.reference and k == 1:
                paths.append(lambda c=cfg: ReferenceStep(c, bc.workers))
            built = [make() for make in paths]
            cases += _bench_paths(built, bc, batch, k)
            del built
            if device.type == "cuda":
                torch.cuda.empty_cache()
    space, image_size, overrides = SIZES[bc.size]
    return {"device": device_name(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "size": bc.size, "space": space,
            "image_size": image_size, "space_overrides": overrides, "config": asdict(bc),
            "cases": cases,
            "summary": summarize(cases, bc)}


def summarize(cases: list[dict[str, Any]], bc: BenchConfig) -> list[dict[str, Any]]:
    """Per (batch, partial_k, optimized dtype): the speed-up over the reference per stage and
    the projected hours of a 50-epoch CIFAR-10 search of both paths."""
    out = []
    keys = sorted({(c["batch"], c["partial_k"], c["dtype"], c["order"]) for c in cases
                   if c["path"] == "optimized"})
    for batch, k, dtype, order in keys:
        row: dict[str, Any] = {"batch": batch, "partial_k": k, "dtype": dtype, "order": order}
        picks = {"optimized": lambda c, d=dtype, o=order: c["path"] == "optimized"
                 and c["dtype"] == d and c["order"] == o,
                 "reference": lambda c, o=order: c["path"] == "reference" and o == "first"}
        for path, pick in picks.items():
            ms = {c["stage"]: c["ms_median"] for c in cases
                  if pick(c) and (c["batch"], c["partial_k"]) == (batch, k)}
            row[f"{path}_hours"] = projected_hours(ms, batch) if ms else None
        for stage in bc.stages:
            ips = {path: c["images_per_s"] for c in cases for path, pick in picks.items()
                   if pick(c) and (c["batch"], c["partial_k"], c["stage"]) == (batch, k, stage)}
            row[f"speedup_stage{stage}"] = (ips["optimized"] / ips["reference"]
                                            if len(ips) == 2 else None)
        out.append(row)
    return out


def projected_hours(ms_per_stage: dict[int, float], batch: int) -> float:
    """Hours of an EPOCHS-epoch CIFAR-10 search with the default stage split (21 of 50 epochs in
    stage 1); with one stage timed, that stage's time for all of them."""
    steps = TRAIN_IMAGES // batch
    stage1 = ms_per_stage.get(1, ms_per_stage.get(2))
    stage2 = ms_per_stage.get(2, stage1)
    n1 = default_stage1(EPOCHS)
    return steps * (n1 * stage1 + (EPOCHS - n1) * stage2) / 3.6e6


def markdown(report: dict[str, Any]) -> str:
    bc = report["config"]
    lines = [f"Device: {report['device']}; torch {report['torch']}; size {report['size']} "
             f"({report['space']} space, {report['image_size']}x{report['image_size']} inputs); "
             f"PGD-{bc['pgd_steps']}; {bc['steps']} timed steps after {bc['warmup']} warm-up; "
             "median (IQR).", "",
             "| path | order | batch | K | stage | dtype | layout | ms/step | images/s | peak MiB | "
             "saved act. MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cases"]:
        peak = "n/a" if c["peak_mem_mb"] is None else f"{c['peak_mem_mb']:.0f}"
        name = c["path"] + (" +compile" if c["compile"] else "")
        lines.append(f"| {name} | {c.get('order', 'first')} | {c['batch']} | {c['partial_k']} | "
                     f"{c['stage']} | {c['dtype']} | "
                     f"{c['layout']} | {c['ms_median']:.1f} ({c['ms_q1']:.1f}-{c['ms_q3']:.1f}) | "
                     f"{c['images_per_s']:.1f} | {peak} | {c['saved_activations_mb']:.1f} |")
    lines += ["", f"| batch | K | optimized dtype | order | speed-up stage 1 | speed-up stage 2 | "
              f"projected {EPOCHS}-epoch hours, optimized | ... reference |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["summary"]:
        cells = [_fmt(r.get("speedup_stage1"), "x"), _fmt(r.get("speedup_stage2"), "x"),
                 _fmt(r["optimized_hours"], " h"), _fmt(r["reference_hours"], " h")]
        lines.append(f"| {r['batch']} | {r['partial_k']} | {r['dtype']} | "
                     f"{r.get('order', 'first')} | " + " | ".join(cells)
                     + " |")
    lines += top_ops_lines(report["cases"], lambda c: f"batch {c['batch']} K {c['partial_k']} "
                           f"stage {c['stage']} {c['dtype']}")
    return "\n".join(lines) + "\n"


def _fmt(v, unit: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}{unit}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_search", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch", type=int, action="append", help="images per weight-train and "
                   "per arch-val batch; repeatable (default 32 and 256; weight lr scaled "
                   "linearly from 0.025 at 32)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per case (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--size", default="proxy", choices=list(SIZES),
                   help="proxy: dsara space C=24, 8 cells, 32x32; small: tiny space, 16x16")
    p.add_argument("--partial-k", type=int, action="append", help="PC-DARTS 1/K channels for "
                   "the optimized path; repeatable (default 1)")
    p.add_argument("--stage", type=int, action="append", help="1 and/or 2 (default both)")
    p.add_argument("--pgd-steps", type=int, default=7, help="PGD steps (default 7)")
    p.add_argument("--compile", action="store_true", help="torch.compile the optimized supernet")
    p.add_argument("--order", action="append", choices=["first", "second"],
                   help="alpha-gradient order of the optimized path, repeatable; the orders are "
                        "timed in turns in one run (default first: the reference path's)")
    p.add_argument("--precision", action="append", choices=["auto", "fp32", "bf16"],
                   help="optimized path's precision; repeatable to compare (default auto)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference path")
    p.add_argument("--workers", type=int, help="reference DataLoader workers (default 2 on "
                   "CUDA, 0 on CPU)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also list torch.profiler's top N ops of one optimized step per stage")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    args = p.parse_args(argv)
    bc = BenchConfig(device=args.device, batches=args.batch or [32, 256], steps=args.steps,
                     warmup=args.warmup, size=args.size, partial_k=args.partial_k or [1],
                     compile=args.compile, precisions=args.precision or ["auto"],
                     orders=args.order or ["first"],
                     profile=args.profile,
                     stages=args.stage or [1, 2],
                     pgd_steps=args.pgd_steps, reference=not args.no_reference,
                     workers=args.workers)
    try:
        report = run_bench(bc)
    except DsaraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return publish(report, "bench_search.py", argv, markdown(report), args.json, args.markdown)
