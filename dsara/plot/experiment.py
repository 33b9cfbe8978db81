"""The pictures of an experiment: clean vs robust accuracy of every run, random cells as a cloud;
and the experiment's self-contained HTML page (tables + the embedded scatter plot)."""

from __future__ import annotations

import html
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..utils.files import write_text_atomic
from . import _mpl

MARKERS = "os^DvP*Xh<>"


def scatter_figure(rows: list[dict[str, Any]], order: list[str], robust: str = "pgd20",
                   title: str = ""):
    """x = clean accuracy, y = `robust` accuracy (%); random cells grey, others one marker per
    source, a larger outlined marker with error bars at each source's mean +- std."""
    fig = _mpl.new_figure(6.0, 4.6)
    ax = fig.add_subplot()
    colors = iter(["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"])
    for i, name in enumerate(order):
        mine = [r for r in rows if r["source"] == name and robust in r["accuracy"]]
        if not mine:
            continue
        xs = [100 * r["accuracy"]["clean"] for r in mine]
        ys = [100 * r["accuracy"][robust] for r in mine]
        is_random = mine[0]["kind"] == "random"
        color = "0.6" if is_random else next(colors)
        ax.scatter(xs, ys, s=22 if is_random else 30, color=color, alpha=0.7,
                   marker="o" if is_random else MARKERS[i % len(MARKERS)],
                   label=f"{name} ({len(mine)})", zorder=2)
        if len(mine) > 1:
            ax.errorbar(statistics.fmean(xs), statistics.fmean(ys), xerr=statistics.stdev(xs),
                        yerr=statistics.stdev(ys), color=color, capsize=3, lw=1, zorder=3,
                        marker=MARKERS[i % len(MARKERS)], ms=8, mec="black")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"{ {'pgd20': 'PGD-20', 'cw': 'CW', 'autoattack': 'AutoAttack'}[robust]} "
                  "accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def plot_experiment(rows, order, out_dir: str | Path, name: str = "experiment",
                    formats=_mpl.FORMATS) -> list[Path]:
    fig = scatter_figure(rows, order, title=f"{name}: every run, mean ± std per source")
    return _mpl.save(fig, Path(out_dir) / f"{name}_scatter", formats)


def _table_html(df) -> str:
    if df.empty:
        return "<p>No results yet.</p>"
    return df.to_html(index=False, escape=True, border=0, na_rep="")


def render_html(name: str, exp, rows, states: dict[str, str]) -> str:
    from ..experiment.report import diagnostics_table, source_table, units_table, versus_random
    from .report import _CSS, _img

    done = sum(s == "COMPLETE" for s in states.values())
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>"
             f"{html.escape(name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Experiment {html.escape(name)}</h1>",
             f"<p class='meta'>{html.escape(exp.description)}<br>{done} of {len(states)} "
             f"units complete; written {datetime.now(UTC).isoformat(timespec='seconds')}. "
             "Accuracies in %, mean ± std over runs.</p>",
             "<h2>By source</h2>", _table_html(source_table(rows, list(exp.sources)))]
    vs = versus_random(rows)
    if not vs.empty:
        parts += ["<h2>Searched minus best random (percentage points)</h2>", _table_html(vs)]
    if rows:
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_experiment(rows, list(exp.sources), tmp, name, formats=("png",))[0]
            parts.append(_img(png, "clean vs PGD-20 accuracy of every run"))
    diag = diagnostics_table(rows)
    if not diag.empty:
        parts += ["<h2>Search diagnostics</h2>", _table_html(diag)]
    parts += ["<h2>Units</h2>", _table_html(units_table(rows)), "</body></html>"]
    return "\n".join(parts)


def write_html(name: str, exp, rows, states, out: str | Path) -> Path:
    return write_text_atomic(out, render_html(name, exp, rows, states))
