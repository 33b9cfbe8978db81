"""How a search moved: curves from a search run directory.

A run directory holds ``config.json``, ``metrics.jsonl`` (one line per epoch) and
``alpha_history.jsonl`` (the raw α of every cell type after each epoch, epoch 0 = initial). Two kinds
of figure come out of it:

- ``search_curves``: clean and PGD validation accuracy, γ* (the stage-2 min-norm weight of the
  clean-loss gradient), the parameter-free op count and the α entropy of each cell type;
- ``alphas_<cell type>``: the softmax weight of every op on every edge across epochs, one panel per
  edge laid out as node (rows) x input (columns), the edges the genotype keeps titled in bold.

The stage-1/stage-2 boundary is shaded on every panel. A run still in progress plots what it has.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import DsaraError
from ..utils.files import read_text
from . import _mpl

CURVES = "search_curves"


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a torn last line (a run writing right now) is skipped."""
    records = []
    lines = read_text(path, "run log").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise DsaraError(f"{path} line {i + 1} is not valid JSON; the file is corrupt") from None
    return records


def load_run(run_dir: str | Path) -> dict:
    """config, metrics and α history of a search run directory (missing files give empty lists)."""
    run_dir = Path(run_dir)
    metrics_path, alpha_path = run_dir / "metrics.jsonl", run_dir / "alpha_history.jsonl"
    if not metrics_path.is_file() and not alpha_path.is_file():
        raise DsaraError(f"{run_dir} is not a search run directory (no metrics.jsonl or "
                         "alpha_history.jsonl); pass the directory a `dsara search` wrote")
    config_path = run_dir / "config.json"
    config = json.loads(read_text(config_path, "search config")) if config_path.is_file() else {}
    return {
        "config": config,
        "metrics": read_jsonl(metrics_path) if metrics_path.is_file() else [],
        "alphas": read_jsonl(alpha_path) if alpha_path.is_file() else [],
    }


def stage1_epochs(run: dict) -> int:
    """Epochs of stage 1: from the metrics' stage column where there is one, else the config."""
    stages = [m.get("stage") for m in run["metrics"]]
    if 2 in stages:
        return stages.index(2)
    config = run["config"]
    if config.get("stage1_epochs") is None and "epochs" in config:  # the default schedule
        from ..search.config import default_stage1

        return default_stage1(int(config["epochs"]))
    return int(config.get("stage1_epochs") or 0)


def plot_search(run_dir: str | Path, out_dir: str | Path | None = None,
                formats=_mpl.FORMATS) -> list[Path]:
    """Draw the figures of a search run into out_dir (default RUN_DIR/plots); returns the files."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "plots"
    run = load_run(run_dir)
    paths = []
    if run["metrics"]:
        paths += _mpl.save(curves_figure(run, run_dir.name), out_dir / CURVES, formats)
    if run["alphas"]:
        for cell_type in run["alphas"][-1]["alphas"]:
            fig = alphas_figure(run, cell_type)
            paths += _mpl.save(fig, out_dir / f"alphas_{cell_type}", formats)
    return paths


def space_info(config: dict) -> dict:
    """name, ops and nodes of the run's space: given in the config, or loaded by its name."""
    space = config.get("space")
    if isinstance(space, dict):
        return space
    if not space:
        return {}
    from ..arch.space import load_space

    try:
        sp = load_space(space, config.get("space_overrides") or None)
    except DsaraError:  # a space file moved since the run: draw without op names
        return {"name": str(space)}
    return {"name": sp.name, "ops": list(sp.ops), "nodes": sp.nodes}


def _total_epochs(run: dict) -> int:
    last = max([m["epoch"] for m in run["metrics"]] + [a["epoch"] for a in run["alphas"]] + [0])
    return max(int(run["config"].get("epochs") or 0), last)


def _series(metrics: list[dict], key: str, sub: str | None = None) -> list[float]:
    out = []
    for m in metrics:
        v = m.get(key)
        v = v.get(sub) if sub is not None and isinstance(v, dict) else v
        out.append(math.nan if v is None else float(v))
    return out


def _cell_types(metrics: list[dict], key: str) -> list[str]:
    return list(next((m[key] for m in reversed(metrics) if isinstance(m.get(key), dict)), {}))


def curves_figure(run: dict, title: str = ""):
    metrics, s1, total = run["metrics"], stage1_epochs(run), _total_epochs(run)
    epochs = [m["epoch"] for m in metrics]
    fig = _mpl.new_figure(10, 6.5)
    from matplotlib.ticker import MaxNLocator
    (acc, gamma), (pfree, entropy) = fig.subplots(2, 2, sharex=True)
    for key, label, style in (("val_clean_acc", "clean (val)", "-"),
                              ("val_pgd_acc", "PGD (val)", "-"),
                              ("train_acc_adv", "PGD (train)", ":")):
        acc.plot(epochs, [100 * v for v in _series(metrics, key)], style, marker=".", label=label)
    acc.set(ylabel="accuracy (%)", title="accuracy")
    acc.legend(fontsize=8)
    g = _series(metrics, "gamma_mean")
    gamma.plot(epochs, g, marker=".", color="tab:purple")
    gamma.set(ylim=(-0.05, 1.05), ylabel="γ* (weight of the clean gradient)",
              title="stage-2 min-norm weight γ*")
    if all(math.isnan(v) for v in g):
        gamma.text(0.5, 0.5, "no γ*: stage 1 only, or gradients summed", ha="center", va="center",
                   transform=gamma.transAxes, color="0.4")
    nodes = int(space_info(run["config"]).get("nodes") or 0)
    for cell_type in _cell_types(metrics, "param_free"):
        pfree.step(epochs, _series(metrics, "param_free", cell_type), where="mid", marker=".",
                   label=cell_type)
    pfree.set(ylabel="kept edges", title="parameter-free ops in the genotype", xlabel="epoch")
    if nodes:
        pfree.set_ylim(-0.2, 2 * nodes + 0.2)
    for cell_type in _cell_types(metrics, "alpha_entropy"):
        entropy.plot(epochs, _series(metrics, "alpha_entropy", cell_type), marker=".",
                     label=cell_type)
    entropy.set(ylabel="mean entropy (nats)", title="α entropy", xlabel="epoch")
    entropy.ticklabel_format(axis="y", useOffset=False)  # entropy moves in the 6th digit early on
    pfree.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (acc, gamma, pfree, entropy):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _mpl.mark_stages(ax, s1, total)
        ax.set_xlim(0.5, max(total, 1) + 0.5)
        ax.grid(alpha=0.3)
    _mpl.stage_legend_note(acc, s1, total)
    for ax in (pfree, entropy):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    space = space_info(run["config"]).get("name")
    fig.suptitle(" · ".join(x for x in (title, f"space {space}" if space else "",
                                        f"{len(epochs)}/{total} epochs") if x))
    return fig


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def _kept_edges(run: dict, cell_type: str) -> set[tuple[int, int]]:
    """(node, input) pairs the latest genotype keeps for this cell type."""
    for m in reversed(run["metrics"]):
        cell = (m.get("genotype") or {}).get(cell_type)
        if cell:
            return {(k // 2, int(src)) for k, (_, src) in enumerate(cell["edges"])}
    return set()


def alphas_figure(run: dict, cell_type: str):
    history = [h for h in run["alphas"] if cell_type in h["alphas"]]
    epochs = [h["epoch"] for h in history]
    weights = [[_softmax(edge) for edge in h["alphas"][cell_type]] for h in history]  # (T, E, ops)
    ops = space_info(run["config"]).get("ops") or []
    if len(ops) != len(weights[0][0]):
        ops = [f"op {o}" for o in range(len(weights[0][0]))]
    n_edges = len(weights[0])
    nodes = next(n for n in range(1, n_edges + 1) if n * (n + 3) // 2 >= n_edges)
    if nodes * (nodes + 3) // 2 != n_edges:
        raise DsaraError(f"alpha history of {cell_type!r} has {n_edges} edges, which is no "
                         "complete cell (2 + 3 + 4 + ... edges)")
    s1, total, kept = stage1_epochs(run), _total_epochs(run), _kept_edges(run, cell_type)
    fig = _mpl.new_figure(2.3 * (nodes + 1) + 0.5, 1.9 * nodes + 1.2)
    from matplotlib.ticker import MaxNLocator

    axes = fig.subplots(nodes, nodes + 1, sharex=True, sharey=True, squeeze=False)
    edge = 0
    for node in range(nodes):
        for src in range(nodes + 1):
            ax = axes[node][src]
            if src >= node + 2:
                ax.axis("off")
                continue
            for o, op in enumerate(ops):
                ax.plot(epochs, [w[edge][o] for w in weights], lw=1.3, label=op,
                        color=_op_color(op, o))
            _mpl.mark_stages(ax, s1, total)
            name = ("c_{k-2}", "c_{k-1}")[src] if src < 2 else str(src - 2)
            ax.set_title(f"${name}$ → {node}", fontsize=9,
                         fontweight="bold" if (node, src) in kept else "normal")
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            edge += 1
        axes[node][0].set_ylabel(f"node {node}\nsoftmax(α)", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(ops), 4), fontsize=8)
    fig.suptitle(f"{cell_type} cell: op weights per edge (bold: kept in the genotype; "
                 "shaded: stage 1)", fontsize=10)
    return fig


def _op_color(op: str, index: int) -> str:
    from .cells import OP_COLORS

    return OP_COLORS.get(op, f"C{index % 10}")
