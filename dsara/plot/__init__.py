"""Pictures: searched cells, how a search moved, and a study's accuracy-robustness front.

Every function writes files and returns their paths, so the search and the study code can call them
at the end of a run::

    from dsara.plot import draw_architecture, plot_search, plot_study, write_report
    draw_architecture("ARNAS", "figures/")            # one drawing per cell type, SVG + PNG
    plot_search("runs/search-0", "runs/search-0/plots")
    plot_train("runs/arch-0")                         # loss, val accuracy, lr; sanity curves
    plot_study(study, "plots/")                       # an optuna.Study
    write_report(study, "report.html")                # one self-contained HTML page

Cells are drawn with graphviz when its ``dot`` program is installed and with matplotlib otherwise;
everything else needs matplotlib only (``pip install "dsara[plot]"``). matplotlib is imported when a
figure is drawn, never by ``import dsara``.
"""

from .cells import cell_dot, draw_architecture, draw_cell
from .report import write_report
from .search import plot_search
from .study import plot_study
from .train import plot_sanity, plot_train

__all__ = ["cell_dot", "draw_architecture", "draw_cell", "plot_sanity", "plot_search",
           "plot_study", "plot_train", "write_report"]
