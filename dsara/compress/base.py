"""What a compressor is: one record per `dsara compress --method` name (`Compressor`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Compressor:
    """A compression method. ``apply(model, cfg, train_cfg, fit, input_size, device)`` replaces
    the model's convs in place and returns (structure, per-layer report, resolved settings):
    `cfg` is the `CompressConfig`, `train_cfg` the source run's `TrainConfig`, `fit` its training
    part. `finetunes`: the compressed network is then retrained with `cfg.finetune_recipe`."""

    name: str
    apply: Callable[..., tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]
    finetunes: bool = False
