"""What every benchmark shares: round-robin timing of several paths, peak memory,
the profiler's top ops, the device's name, and publishing a result into docs/.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..data.datasets import ImageSet
from ..utils.files import write_text_atomic


class _AugmentedImages(torch.utils.data.Dataset):
    """Per-sample pad-4 random crop and flip on the CPU, as torchvision transforms do in DARTS."""

    def __init__(self, data: ImageSet):
        from torchvision import transforms  # only the reference path needs torchvision

        self.data = data
        size = data.images.shape[-1]
        self.transform = transforms.Compose([transforms.RandomCrop(size, padding=4),
                                             transforms.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        return self.transform(self.data.images[i]).float().div(255), self.data.labels[i]


def _cycle(loader) -> Iterator:
    while True:
        yield from loader


def round_robin(paths: list, warmup: int, steps: int, device: torch.device) -> list[list[float]]:
    """Milliseconds of `steps` steps of every path, taken in turns (one step of each path per
    round), so that a change of machine load hits every path alike: on a shared machine the
    ratios stay meaningful where back-to-back blocks of steps would not."""
    for path in paths:
        for _ in range(warmup):
            path()
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(steps):
        for path, out in zip(paths, times):
            out.append(_one_step_ms(path, device))
    return times


def _one_step_ms(path, device: torch.device) -> float:
    if device.type != "cuda":
        start = time.perf_counter()
        path()
        return 1e3 * (time.perf_counter() - start)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    path()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end)


def peak_mb(path, device: torch.device) -> float | None:
    """Peak CUDA memory of one more step of `path` alone (None on a CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    path()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def top_ops(step, device: torch.device, n: int) -> list[dict[str, Any]]:
    """The `n` ops with the most self time in one step, from `torch.profiler`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
    return [{"op": e.key, "calls": e.count, "self_ms": getattr(e, key, 0) / 1e3}
            for e in events[:n]]


def top_ops_lines(cases: list[dict[str, Any]], label) -> list[str]:
    """Markdown tables of the cases' `top_ops`, each headed by `label(case)`."""
    lines: list[str] = []
    for c in cases:
        if c.get("top_ops"):
            lines += ["", f"Top ops of one optimized step: {label(c)}", "",
                      "| op | calls | self ms |", "|---|---|---|"]
            lines += [f"| `{o['op']}` | {o['calls']} | {o['self_ms']:.1f} |" for o in c["top_ops"]]
    return lines


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def publish(report: dict[str, Any], script: str, argv: list[str] | None, table: str,
            json_path: Path | None, md_path: Path | None) -> int:
    """Record the command line in `report`, write the JSON and markdown files asked for, print the
    tables: the common end of every benchmark script."""
    report["command"] = f"python scripts/{script} " + " ".join(argv or sys.argv[1:])
    for path, text in ((json_path, json.dumps(report, indent=2) + "\n"), (md_path, table)):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, text)
    print(table, end="")
    return 0


def endless(loader) -> Iterator:
    """A loader's batches, epoch after epoch, for as many steps as a benchmark takes."""
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1
