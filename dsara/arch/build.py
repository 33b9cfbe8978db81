"""`build_model`: one entry point for every network dsara trains or evaluates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from ..errors import DsaraError
from .archfile import Architecture, resolve_architecture
from .baselines import baseline_name, build_baseline
from .network import Network


def build_model(arch: str | Path | Architecture, *, cells: int | None = None,
                channels: int | None = None, num_classes: int | None = None,
                auxiliary: bool | None = None, activation=None,
                normalize: bool | None = None) -> nn.Module:
    """Build a discrete network from an architecture file, an `Architecture`, a built-in cell, or
    a baseline name (``resnet18``, ``wrn34_10``, ... see `dsara.arch.baselines.BASELINES`).

    `cells` / `channels` resize the layout (equal stages: reductions at L//3 and 2L//3, as DARTS;
    unequal stages: normal cells in proportion to their depths); `num_classes` replaces the
    classifier size; `auxiliary=False` drops the auxiliary head; `activation` ("relu", "swish",
    "sparta" or a table per cell type) replaces the cells' activation (see `dsara.arch.activations`);
    `normalize` turns the input normalization on or off (default: as the architecture says; DSARA
    cells off, DARTS cells on).
    """
    if isinstance(arch, str) and baseline_name(arch) and not Path(arch).is_file():
        if (cells is not None or channels is not None or auxiliary or activation is not None
                or normalize is not None):
            raise DsaraError(f"{arch} is a baseline with a fixed layout; cells, channels, an "
                             "auxiliary head, an activation and normalize apply to cell-based "
                             "architectures only")
        return build_baseline(arch, 10 if num_classes is None else num_classes)
    a = resolve_architecture(arch).resized(cells, channels)
    macro = dataclasses.replace(
        a.macro,
        num_classes=a.macro.num_classes if num_classes is None else int(num_classes),
        auxiliary_weight=0.0 if auxiliary is False else a.macro.auxiliary_weight,
        activation=a.macro.activation if activation is None else activation,
        normalize=a.macro.normalize if normalize is None else bool(normalize))
    return Network(a.genotype, macro)
