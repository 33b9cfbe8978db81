"""`build_model`: one entry point for every network dsara trains or evaluates."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .archfile import Architecture, resolve_architecture
from .network import Network


def build_model(arch: str | Path | Architecture, *, cells: int | None = None,
                channels: int | None = None, num_classes: int | None = None,
                auxiliary: bool | None = None) -> nn.Module:
    """Build a discrete network from an architecture file, an `Architecture` or a built-in cell.

    `cells` / `channels` resize the layout (normal cells are shared out in proportion to the stage
    depths); `num_classes` replaces the classifier size; `auxiliary=False` drops the auxiliary head.
    """
    a = resolve_architecture(arch).resized(cells, channels)
    macro = a.macro
    if num_classes is not None or auxiliary is not None:
        import dataclasses

        macro = dataclasses.replace(
            macro,
            num_classes=macro.num_classes if num_classes is None else int(num_classes),
            auxiliary_weight=0.0 if auxiliary is False else macro.auxiliary_weight)
    return Network(a.genotype, macro)
