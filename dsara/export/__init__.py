"""Exporters: a trained dsara network in the formats the field reads, keyed by name.

    dsara export RUN_DIR --format torch-export --out model.pt2
    dsara export RUN_DIR --format onnx --out model.onnx          # pip install "dsara[export]"
    dsara export RUN_DIR --format robustbench --out rb/          # model card + model.py + weights
    dsara export RUN_DIR --format genotype --out genotype.txt    # the authors' Genotype(...) text

RUN_DIR is a `dsara train` run directory (its best.pt, else last.pt) or a checkpoint file; the
genotype exporter also takes an architecture file or a `dsara search` run directory. Every
exported model takes images in [0, 1] of shape (batch, channels, H, W) -- any batch size, the
normalization inside -- and returns logits, in eval mode and fp32, as `dsara evaluate` runs it.
Each entry follows the format's own documentation (torch.export, ONNX, RobustBench's model zoo,
the DARTS code base); none is a reconstruction of a paper.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import DsaraError
from .genotype_text import export_genotype
from .portable import export_onnx, export_torch
from .robustbench import export_robustbench
from .source import ExportOptions, Source, load_source

# name -> exporter(source, out, options) -> the files written
EXPORTERS: dict[str, Callable[[Source, Path, ExportOptions], list[Path]]] = {
    "torch-export": export_torch,
    "onnx": export_onnx,
    "robustbench": export_robustbench,
    "genotype": export_genotype,
}


def check_format(name: str) -> str:
    if name not in EXPORTERS:
        raise DsaraError(f"unknown export format {name!r}; formats: {', '.join(EXPORTERS)}")
    return name


def export(target: str | Path, fmt: str, out: str | Path,
           options: ExportOptions | None = None) -> list[Path]:
    """Export the network of `target` (run directory, checkpoint, or for `genotype` also an
    architecture file) in format `fmt` to `out`; returns the files written."""
    exporter = EXPORTERS[check_format(fmt)]
    source = load_source(target, weights=fmt != "genotype")
    return exporter(source, Path(out), options or ExportOptions())


__all__ = ["EXPORTERS", "ExportOptions", "Source", "check_format", "export", "load_source"]
