"""The `genotype` format: the architecture as the authors' code bases write it.

DARTS, PC-DARTS, AdvRush and the ARNAS (DSARA) code keep cells as a namedtuple literal,
``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)``, with one list and
one ``*_concat`` per cell type; their derivation code writes the concat as ``range(2, n + 2)``, as
here. The file holds that one line (parsed back by `dsara.parse_genotype`, never evaluated) and
comment lines saying what it is.
"""

from __future__ import annotations

from pathlib import Path

from ..arch.genotype import Genotype
from ..utils.files import write_text_atomic
from .source import ExportOptions, Source


def authors_text(genotype: Genotype) -> str:
    """``Genotype(...)`` with each contiguous concat ``[2, ..., n + 1]`` written ``range(2, n + 2)``."""
    parts = []
    for cell_type, cell in genotype.cells.items():
        concat = list(cell.concat)
        contiguous = concat == list(range(2, 2 + len(concat)))
        parts.append(f"{cell_type}={[tuple(e) for e in cell.edges]!r}")
        parts.append(f"{cell_type}_concat="
                     + (f"range(2, {2 + len(concat)})" if contiguous else repr(concat)))
    return f"Genotype({', '.join(parts)})"


def export_genotype(source: Source, out: Path, options: ExportOptions) -> list[Path]:
    arch = source.architecture
    if arch is None:
        from ..errors import DsaraError

        raise DsaraError(f"{source.run_dir} holds a {source.spec.get('kind', 'non-cell')} "
                         f"network ({source.name}), which has no genotype; export a cell network")
    types = ", ".join(arch.genotype.cells)
    text = (f"# {arch.name or source.name}: cell types {types}; {arch.macro.nodes} nodes per cell\n"
            f"# namedtuple Genotype fields: "
            f"{' '.join(f'{t} {t}_concat' for t in arch.genotype.cells)}\n"
            f"{authors_text(arch.genotype)}\n")
    return [write_text_atomic(out, text)]
