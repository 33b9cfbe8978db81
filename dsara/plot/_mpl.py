"""matplotlib, imported on first use, and the one way figures are saved.

Figures are `matplotlib.figure.Figure` objects rather than pyplot ones: no global state, no GUI
backend, nothing to close; `savefig` renders PNG with Agg and SVG with the SVG backend.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DsaraError
from ..utils.files import ensure_dir

FORMATS = ("svg", "png")
DPI = 150  # PNG pixels per inch: sharp on screens and in the README without huge files


def new_figure(width: float, height: float):
    """A blank figure of width x height inches."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise DsaraError('drawing figures needs matplotlib: pip install "dsara[plot]"') from None
    return Figure(figsize=(width, height), layout="constrained")


def check_formats(formats) -> tuple[str, ...]:
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise DsaraError(f"unknown figure format {bad[0] if bad else None!r}; "
                         f"known: {', '.join(FORMATS)}")
    return formats


def save(fig, stem: Path, formats=FORMATS) -> list[Path]:
    """Write `fig` as stem.svg / stem.png (white background, so no viewer shows it transparent)."""
    stem = Path(stem)
    ensure_dir(stem.parent, "output folder")
    paths = []
    for fmt in check_formats(formats):
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(path, format=fmt, dpi=DPI, facecolor="white",
                    metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    return paths


def mark_stages(ax, stage1_epochs: int, epochs: int) -> None:
    """Shade stage 1 and draw the stage-1/stage-2 boundary, if the run has both stages."""
    if 0 < stage1_epochs < epochs:
        ax.axvspan(0, stage1_epochs + 0.5, color="0.92", zorder=0)
        ax.axvline(stage1_epochs + 0.5, color="0.4", lw=1, ls="--", zorder=1)


def stage_legend_note(ax, stage1_epochs: int, epochs: int) -> None:
    if 0 < stage1_epochs < epochs:
        ax.text(stage1_epochs + 0.5, 1.0, " stage 2 ", transform=ax.get_xaxis_transform(),
                ha="left", va="top", fontsize=7, color="0.3")
        ax.text(stage1_epochs + 0.5, 1.0, " stage 1 ", transform=ax.get_xaxis_transform(),
                ha="right", va="top", fontsize=7, color="0.3")


def percent_axis(axis) -> None:
    """Show an axis of fractions as percentages with the fewest decimals (0 to 3) that keep
    its tick labels apart: a range of 6.0-6.6% gets 6.0%, 6.1%, ..., not "6%" seven times."""
    from matplotlib.ticker import PercentFormatter

    class DistinctPercent(PercentFormatter):
        def format_ticks(self, values):
            for decimals in range(4):
                self.decimals = decimals
                labels = super().format_ticks(values)
                if len(set(labels)) == len(labels):
                    break
            return labels

    axis.set_major_formatter(DistinctPercent(xmax=1, decimals=0))
