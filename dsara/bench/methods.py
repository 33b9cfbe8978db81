"""Cost of one training step of every registered method, as a ratio to PGD-AT on the same batch.

Each case trains its own copy of one model (same initial weights) on one fixed batch with
`dsara.train.loop.train_step` (what `dsara train` runs) and the method's registered defaults
(inner steps, step size) unless the case says otherwise. Cases are timed round-robin, one step of
each per round, so that load from other processes on a shared machine spreads over all of them
alike; the figure is the median over rounds after `warmup` untimed rounds. Per-run offline work
(mart-ss's pseudo-labelling, LADDER's decoder, SVMs and generated set) is not a step and is not in
these figures; mart-ss and LADDER steps are timed on a batch laid out as their loaders make it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..arch.build import build_model
from ..data.datasets import SyntheticConfig, load_dataset
from ..train.config import TrainConfig
from ..train.loop import adv_params, make_optimizer, train_step
from ..train.methods import METHODS
from ..utils.device import resolve_device
from .common import device_name

# (label, method, method_options): every method at its defaults, plus the adversarial variants
CASES = [(m, m, {}) for m in METHODS] + [
    ("bang (adversarial)", "bang", {"adversarial": True}),
    ("jsigr (adversarial)", "jsigr", {"adversarial": True}),
]


@dataclass
class MethodBenchConfig:
    arch: str = "ARNAS"  # architecture (built-in cell, file or baseline)
    cells: int | None = 8  # cell networks only; 0 for a baseline
    channels: int | None = 8
    image_size: int = 32  # synthetic images, pixels per side
    batch: int = 32
    rounds: int = 5  # timed rounds (one step of every case per round)
    warmup: int = 1
    device: str = "cpu"
    seed: int = 0


def _model(bc: MethodBenchConfig):
    torch.manual_seed(bc.seed)
    if not bc.cells:  # a baseline (0 or None)
        return build_model(bc.arch)
    return build_model(bc.arch, cells=bc.cells, channels=bc.channels)


def _case_step(bc: MethodBenchConfig, base, method: str, options: dict, x, y, device):
    model = copy.deepcopy(base).to(device).train()
    cfg = TrainConfig(arch=bc.arch, out="-", method=method, method_options=options,
                      device=str(device)).resolved()
    fn = METHODS[method].fn
    aux = model.macro.auxiliary_weight if getattr(model, "has_auxiliary", False) else 0.0
    p = adv_params(cfg, aux)  # the method's own attack mode and start, as dsara train
    opt, _ = make_optimizer(model, cfg)
    gen = torch.Generator(device).manual_seed(bc.seed)
    return lambda: train_step(model, x, y, fn, p, opt, cfg.grad_clip, gen)


def run_bench(bc: MethodBenchConfig) -> dict[str, Any]:
    device = resolve_device(bc.device)
    train, _, _ = load_dataset("synthetic", synthetic=SyntheticConfig(
        n_train=bc.batch, n_test=2, image_size=bc.image_size))
    x, y = train.images.to(device).float().div_(255), train.labels.to(device)
    base = _model(bc)
    steps = {label: _case_step(bc, base, m, o, x, y, device) for label, m, o in CASES}
    times: dict[str, list[float]] = {label: [] for label in steps}
    for r in range(bc.warmup + bc.rounds):
        for label, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            loss, _ = step()
            loss.item()  # wait for the step
            if r >= bc.warmup:
                times[label].append(1e3 * (time.perf_counter() - start))
    ref, ref_min = statistics.median(times["pgd-at"]), min(times["pgd-at"])
    # on a loaded machine the fastest round is the least disturbed one: both ratios are reported
    rows = [{"case": label, "median_ms": statistics.median(ms), "min_ms": min(ms),
             "max_ms": max(ms), "ratio_to_pgd_at": statistics.median(ms) / ref,
             "min_ratio_to_pgd_at": min(ms) / ref_min} for label, ms in times.items()]
    return {"config": bc.__dict__, "device": device_name(device), "dtype": "fp32",
            "torch": torch.__version__, "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    bc = report["config"]
    size = f"{bc['cells']} cells, C={bc['channels']}" if bc["cells"] else "a baseline"
    lines = [f"Device: {report['device']}, {report['dtype']}, torch {report['torch']}; "
             f"{bc['arch']} ({size}), batch {bc['batch']} of {bc['image_size']}x"
             f"{bc['image_size']}; median of {bc['rounds']} round-robin rounds after "
             f"{bc['warmup']} warm-up", "",
             "| method | ms per step (median) | min–max | × PGD-AT (medians) | × PGD-AT (minima) |",
             "|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['case']} | {r['median_ms']:.0f} | {r['min_ms']:.0f}–"
                     f"{r['max_ms']:.0f} | {r['ratio_to_pgd_at']:.2f} | "
                     f"{r['min_ratio_to_pgd_at']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="time one training step of every method, as a "
                                "ratio to PGD-AT on the same batch and machine")
    for f, v in MethodBenchConfig().__dict__.items():
        kind = int if f in ("cells", "channels") else type(v)
        p.add_argument(f"--{f.replace('_', '-')}", type=kind, default=v)
    p.add_argument("--json", help="write the report here")
    args = vars(p.parse_args(argv))
    out = args.pop("json")
    report = run_bench(MethodBenchConfig(**args))
    print(markdown(report), end="")
    if out:
        from ..utils.files import write_json_atomic

        write_json_atomic(out, report)
    return 0
