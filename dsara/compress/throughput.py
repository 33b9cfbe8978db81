"""Inference throughput of networks side by side: images/s at given batch sizes, the ratio to the
first network, parameters and multiply-adds. Measured, never estimated.

Eval mode, fp32, ``torch.inference_mode``. Each repeat times every network once in turn, in
alternating order (so a machine whose load changes slows all of them alike), after warm-up passes;
the figure is the median over repeats, the spread (max - min) / median. On CUDA the time comes from CUDA events around the timed passes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..arch.profile import count_macs, count_parameters


@dataclass
class BenchConfig:
    batches: tuple[int, ...] = (1, 256)  # images per forward pass
    repeats: int = 5  # timed repeats per network and batch (median reported)
    warmup: int = 2  # untimed passes first (allocator, kernels, caches)
    min_images: int = 64  # a repeat runs enough passes to cover at least this many images
    input_size: tuple[int, int, int] = (3, 32, 32)


@dataclass
class BenchRow:
    name: str
    params: int
    macs: int
    images_per_s: dict[int, float]  # batch -> median images/s
    spread: dict[int, float]  # batch -> (max - min) / median over the repeats

    def to_dict(self) -> dict:
        return asdict(self)


def _passes(cfg: BenchConfig, batch: int) -> int:
    return max(1, -(-cfg.min_images // batch))


def _time(model: nn.Module, x: torch.Tensor, passes: int) -> float:
    """Seconds for `passes` forward passes of x."""
    if x.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(passes):
            model(x)
        end.record()
        torch.cuda.synchronize(x.device)
        return start.elapsed_time(end) / 1000
    t0 = time.perf_counter()
    for _ in range(passes):
        model(x)
    return time.perf_counter() - t0


def bench(models: Mapping[str, nn.Module], device: torch.device | str = "cpu",
          cfg: BenchConfig = BenchConfig()) -> list[BenchRow]:
    device = torch.device(device)
    models = {k: m.to(device).eval() for k, m in models.items()}
    rows = {k: BenchRow(k, count_parameters(m), count_macs(m, cfg.input_size), {}, {})
            for k, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for batch in cfg.batches:
            x = torch.rand(batch, *cfg.input_size, generator=gen).to(device)
            n = _passes(cfg, batch)
            for m in models.values():
                _time(m, x, cfg.warmup)
            times: dict[str, list[float]] = {k: [] for k in models}
            order = list(models)
            for r in range(cfg.repeats):
                # interleaved, in alternating order: load drifts and cache effects hit every
                # network alike
                for k in (order if r % 2 == 0 else order[::-1]):
                    times[k].append(_time(models[k], x, n))
            for k, ts in times.items():
                med = statistics.median(ts)
                rows[k].images_per_s[batch] = batch * n / med
                rows[k].spread[batch] = (max(ts) - min(ts)) / med
    return list(rows.values())


def describe(device: torch.device | str, cfg: BenchConfig) -> str:
    device = torch.device(device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} torch thread(s)")
    return (f"{where}; fp32, eval mode; input {'x'.join(map(str, cfg.input_size))}; median of "
            f"{cfg.repeats} interleaved repeats after {cfg.warmup} warm-up passes")


def table(rows: Sequence[BenchRow]) -> str:
    """A text table; the ratio column is images/s relative to the first row."""
    base = rows[0]
    batches = list(base.images_per_s)
    head = ["network", "params", "MACs"] + [h for b in batches
                                            for h in (f"img/s @{b}", f"ratio @{b}")]
    lines = [head]
    for r in rows:
        cells = [r.name, f"{r.params / 1e6:.3f} M", f"{r.macs / 1e6:.1f} M"]
        for b in batches:
            cells += [f"{r.images_per_s[b]:.1f} (±{50 * r.spread[b]:.0f}%)",
                      f"{r.images_per_s[b] / base.images_per_s[b]:.2f}x"]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)


def load_network(target: str) -> nn.Module:
    """A trained run directory or checkpoint (compressed or not), else an architecture or
    baseline name (random weights: throughput does not depend on them)."""
    from pathlib import Path

    if Path(target).exists():
        from ..train.checkpoint import load_trained

        return load_trained(target)[0]
    from ..arch.build import build_model

    return build_model(target)


def main(argv: Sequence[str] | None = None) -> int:
    """`python scripts/bench_inference.py ORIGINAL COMPRESSED [...]`: the table of `bench`."""
    import argparse

    from ..utils.device import resolve_device

    p = argparse.ArgumentParser(description="Inference throughput (images/s) of networks side "
                                "by side, ratio to the first, parameters and multiply-adds.")
    p.add_argument("targets", nargs="+", help="run directories, checkpoints, architecture or "
                   "baseline names; the first is the reference of the ratio")
    p.add_argument("--batches", default="1,256", help="comma-separated batch sizes (1,256)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--image-size", type=int, default=32, help="input side in pixels (32)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--json", help="also write the rows and the setup to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = BenchConfig(batches=tuple(int(b) for b in args.batches.split(",")),
                      repeats=args.repeats, input_size=(3, args.image_size, args.image_size))
    names = list(dict.fromkeys(args.targets))
    rows = bench({t: load_network(t) for t in names}, device, cfg)
    print(describe(device, cfg))
    print(table(rows))
    if args.json:
        from ..utils.files import write_json_atomic

        write_json_atomic(args.json, {"setup": describe(device, cfg),
                                      "rows": [r.to_dict() for r in rows]})
    return 0
