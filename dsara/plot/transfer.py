"""The transfer matrix as a heat map: rows are the models the examples were crafted on, columns
the models they were scored on, cells the target's accuracy (the diagonal is white-box)."""

from __future__ import annotations

from pathlib import Path

from . import _mpl


def transfer_figure(result: dict, title: str | None = None):
    names, acc = result["models"], result["accuracy"]
    n = len(names)
    fig = _mpl.new_figure(1.6 + 1.1 * n, 1.2 + 0.9 * n)
    ax = fig.add_subplot()
    im = ax.imshow([[100 * v for v in row] for row in acc], cmap="viridis", vmin=0,
                   vmax=100 * max(max(result["clean"].values()), 1e-9))
    for i in range(n):
        for j in range(n):
            value = 100 * acc[i][j]
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if value < 50 * max(result["clean"].values()) else "black")
    ax.set_xticks(range(n), [f"{m}\n(clean {100 * result['clean'][m]:.1f})" for m in names],
                  fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("scored on (target)")
    ax.set_ylabel("crafted on (source)")
    eps = result["eps"]
    ax.set_title(title or f"{result['attack']} at eps {eps * 255:.1f}/255: target accuracy (%), "
                 f"n = {result['n']}", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8, label="accuracy (%)")
    return fig


def plot_transfer_matrix(result: dict, stem: str | Path, formats=_mpl.FORMATS,
                         title: str | None = None) -> list[Path]:
    """Draw the heat map to stem.svg / stem.png; returns the paths."""
    return _mpl.save(transfer_figure(result, title), Path(stem), formats)
