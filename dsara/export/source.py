"""What an exporter reads: the trained network of a run directory (or only its architecture)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..arch.archfile import Architecture, resolve_architecture
from ..data.datasets import SyntheticConfig
from ..errors import DsaraError

ONNX_OPSET = 18  # ONNX opset of exported models; onnxruntime >= 1.14 runs it
FIXED_SIZES = {"cifar10": 32, "cifar100": 32, "svhn": 32}  # image side in pixels


@dataclass
class ExportOptions:
    image_size: int | None = None  # input side in pixels; None: the size the run trained on
    opset: int = ONNX_OPSET
    name: str | None = None  # model name in a RobustBench card; None: the run directory's name


@dataclass
class Source:
    run_dir: Path
    spec: dict[str, Any]  # the checkpoint's model spec (baseline or architecture at its size)
    model: nn.Module | None = None  # eval mode, fp32, CPU; None when only the genotype is needed
    checkpoint: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the run's TrainConfig
    evaluation: dict[str, Any] | None = None  # evaluation.json beside the checkpoint
    epoch: int | None = None  # the checkpoint's epoch

    @property
    def architecture(self) -> Architecture | None:
        if self.spec.get("kind") != "architecture":
            return None
        return Architecture.from_dict(self.spec["architecture"], f"{self.run_dir} model spec")

    @property
    def name(self) -> str:
        return self.spec.get("name") or self.run_dir.name

    @property
    def channels(self) -> int:
        stats = self.spec.get("architecture", {}).get("macro", self.spec)
        return len(stats.get("mean") or (0, 0, 0))

    def image_size(self, options: ExportOptions) -> int:
        """The input side the exported program is traced at (the run's, or --image-size)."""
        if options.image_size is not None:
            if options.image_size < 8:
                raise DsaraError(f"--image-size must be >= 8 pixels, got {options.image_size}")
            return options.image_size
        dataset = self.config.get("dataset")
        if dataset == "synthetic":
            return int((self.config.get("synthetic") or {}).get("image_size",
                                                                 SyntheticConfig.image_size))
        if dataset in FIXED_SIZES:
            return FIXED_SIZES[dataset]
        raise DsaraError(f"{self.run_dir} trained on {dataset or 'an unknown dataset'}, whose image "
                         "size dsara does not know; pass --image-size PIXELS")


def load_source(target: str | Path, weights: bool = True) -> Source:
    """A trained run (best.pt, else last.pt) or checkpoint; without `weights` also an architecture
    file, a search run directory or a built-in cell name."""
    from ..train.checkpoint import checkpoint_path, load_trained

    p = Path(target)
    trained = p.is_file() and p.suffix == ".pt" or p.is_dir() and any(
        (p / n).is_file() for n in ("best.pt", "last.pt"))
    if trained:
        model, ckpt, path = load_trained(checkpoint_path(p))
        evaluation = _read_json(path.parent / "evaluation.json")
        return Source(path.parent, ckpt.get("model_spec") or {}, model.float().cpu().eval(),
                      path, dict(ckpt.get("config") or {}), evaluation, ckpt.get("epoch"))
    if weights:
        raise DsaraError(f"{p} is not a `dsara train` run directory (no best.pt or last.pt) or a "
                         "checkpoint file; train first (dsara train ARCH --out RUN_DIR)")
    arch_file = p / "architecture.json" if p.is_dir() else p
    if p.is_dir() and not arch_file.is_file():
        raise DsaraError(f"{p} holds no best.pt, last.pt or architecture.json")
    arch = resolve_architecture(arch_file if p.exists() else str(target))
    name = arch.name or (p.name if p.is_dir() else p.stem)
    return Source(p if p.is_dir() else p.parent, {"kind": "architecture", "name": name,
                                                  "architecture": arch.to_dict()})


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DsaraError(f"cannot read {path} ({type(e).__name__}); run dsara evaluate again to "
                         "rewrite it") from None
