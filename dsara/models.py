"""`build_model`: one entry point for every network dsara trains or evaluates."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .archfile import Architecture, resolve_architecture
from .baselines import baseline_name, build_baseline
from .errors import DsaraError
from .network import Network


def build_model(arch: str | Path | Architecture, *, cells: int | None = None,
                channels: int | None = None, num_classes: int | None = None,
                auxiliary: bool | None = None) -> nn.Module:
    """Build a discrete network from an architecture file, an `Architecture`, a built-in cell, or
    a baseline name (``resnet18``, ``wrn34_10``, ... see `dsara.baselines.BASELINES`).

    `cells` / `channels` resize the layout (equal stages: reductions at L//3 and 2L//3, as DARTS;
    unequal stages: normal cells in proportion to their depths); `num_classes` replaces the
    classifier size; `auxiliary=False` drops the auxiliary head.
    """
    if isinstance(arch, str) and baseline_name(arch) and not Path(arch).is_file():
        if cells is not None or channels is not None or auxiliary:
            raise DsaraError(f"{arch} is a baseline with a fixed layout; cells, channels and an "
                             "auxiliary head apply to cell-based architectures only")
        return build_baseline(arch, 10 if num_classes is None else num_classes)
    a = resolve_architecture(arch).resized(cells, channels)
    macro = a.macro
    if num_classes is not None or auxiliary is not None:
        import dataclasses

        macro = dataclasses.replace(
            macro,
            num_classes=macro.num_classes if num_classes is None else int(num_classes),
            auxiliary_weight=0.0 if auxiliary is False else macro.auxiliary_weight)
    return Network(a.genotype, macro)
