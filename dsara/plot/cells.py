"""Cell drawings like the figures of the DARTS and DSARA papers.

Inputs c_{k-2}, c_{k-1} on the left, intermediate nodes 0..N-1 in the middle, the output c_{k} on
the right; every kept edge is labelled with its op. With graphviz's ``dot`` on the PATH the graph is
laid out by dot (as the DARTS authors' `visualize.py` does); without it, by a small layered layout
drawn with matplotlib that looks the same, so drawing never needs a system package.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

from ..arch.archfile import Architecture, resolve_architecture
from ..arch.genotype import CellGenotype
from ..errors import DsaraError
from ..utils.files import ensure_dir
from . import _mpl

ENGINES = ("auto", "graphviz", "matplotlib")
INPUT_FILL, NODE_FILL, OUTPUT_FILL = "#b4eeb4", "#add8e6", "#eee8aa"  # the DARTS figure colours
# One colour per op, the same in every drawing, so cells can be compared at a glance.
OP_COLORS = {
    "none": "#999999",
    "skip_connect": "#7f7f7f",
    "max_pool_3x3": "#8c564b",
    "avg_pool_3x3": "#bc7d39",
    "sep_conv_3x3": "#1f77b4",
    "sep_conv_5x5": "#17becf",
    "dil_conv_3x3": "#d62728",
    "dil_conv_5x5": "#9467bd",
}
DOT_TIMEOUT_S = 60
LAYER_DX, BOX_W, BOX_H = 2.4, 0.9, 0.55  # matplotlib drawing: layer spacing and node box size


def op_color(op: str) -> str:
    return OP_COLORS.get(op, "#000000")


def _dot_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _state(src: int) -> str:
    return ("in0", "in1")[src] if src < 2 else f"n{src - 2}"


def cell_dot(cell: CellGenotype, title: str = "") -> str:
    """The graphviz ``dot`` text of one cell."""
    lines = [
        "digraph cell {",
        f"  graph [rankdir=LR, bgcolor=white, nodesep=0.25, ranksep=0.7, fontname=Helvetica, "
        f"fontsize=16, labelloc=t, label={_dot_string(title)}];",
        "  node [shape=box, style=\"filled,rounded\", fontname=Helvetica, fontsize=14, "
        "penwidth=1.5, height=0.45, width=0.5];",
        "  edge [fontname=Helvetica, fontsize=11, penwidth=1.5, arrowsize=0.7];",
        f"  in0 [label=<c<SUB>k-2</SUB>>, fillcolor=\"{INPUT_FILL}\"];",
        f"  in1 [label=<c<SUB>k-1</SUB>>, fillcolor=\"{INPUT_FILL}\"];",
        "  { rank=same; in0; in1; }",
    ]
    lines += [f"  n{i} [label=\"{i}\", fillcolor=\"{NODE_FILL}\"];" for i in range(cell.nodes)]
    lines.append(f"  out [label=<c<SUB>k</SUB>>, fillcolor=\"{OUTPUT_FILL}\"];")
    for k, (op, src) in enumerate(cell.edges):
        color = op_color(op)
        lines.append(f"  {_state(src)} -> n{k // 2} [label={_dot_string(op)}, color=\"{color}\", "
                     f"fontcolor=\"{color}\"];")
    lines += [f"  {_state(c)} -> out [color=gray50];" for c in cell.concat]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _render_dot(dot: str, dot_exe: str, path: Path, fmt: str) -> Path:
    extra = ["-Gdpi=150"] if fmt == "png" else []  # dot's default 96 dpi is blurry on screens
    try:
        proc = subprocess.run([dot_exe, f"-T{fmt}", *extra, "-o", str(path)], input=dot.encode(),
                              capture_output=True, timeout=DOT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DsaraError(f"graphviz {dot_exe} failed to run ({e}); pass engine='matplotlib' "
                         "(--engine matplotlib) to draw without it") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise DsaraError(f"graphviz {dot_exe} -T{fmt} failed: {err[-1] if err else proc.returncode}"
                         "; pass engine='matplotlib' (--engine matplotlib) to draw without it")
    return path


def _dot_exe(engine: str) -> str | None:
    if engine not in ENGINES:
        raise DsaraError(f"unknown drawing engine {engine!r}; known: {', '.join(ENGINES)}")
    exe = shutil.which("dot") if engine != "matplotlib" else None
    if engine == "graphviz" and exe is None:
        raise DsaraError("graphviz's `dot` is not installed (e.g. apt-get install graphviz); "
                         "use engine 'auto' or 'matplotlib' to draw with matplotlib instead")
    return exe


def draw_cell(cell: CellGenotype, stem: str | Path, title: str = "", formats=_mpl.FORMATS,
              engine: str = "auto") -> list[Path]:
    """Draw one cell to stem.svg / stem.png; returns the files written."""
    formats, stem = _mpl.check_formats(formats), Path(stem)
    exe = _dot_exe(engine)
    if exe is None:
        return _mpl.save(_cell_figure(cell, title), stem, formats)
    ensure_dir(stem.parent, "output folder")
    dot = cell_dot(cell, title)
    return [_render_dot(dot, exe, stem.with_name(f"{stem.name}.{fmt}"), fmt) for fmt in formats]


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("._") or "architecture"


def draw_architecture(arch, out_dir: str | Path, formats=_mpl.FORMATS,
                      engine: str = "auto") -> list[Path]:
    """Draw every cell type of an architecture (object, file or built-in name) into out_dir.

    Files are named ``<name>_<cell type>.<format>``, e.g. ``ARNAS_robust.svg``.
    """
    resolved: Architecture = resolve_architecture(arch)
    name = resolved.name or (Path(arch).stem if isinstance(arch, (str, Path)) else "architecture")
    paths = []
    for cell_type, cell in resolved.genotype.cells.items():
        stem = Path(out_dir) / f"{_slug(name)}_{_slug(cell_type)}"
        paths += draw_cell(cell, stem, f"{name}: {cell_type} cell", formats, engine)
    return paths


# --- the matplotlib fallback: a layered layout like dot's -------------------------------------

def _layers(cell: CellGenotype) -> list[list[int]]:
    """States grouped by longest path from the inputs; the output is the state -1."""
    depth = {0: 0, 1: 0}
    for i in range(cell.nodes):
        depth[i + 2] = 1 + max(depth[src] for _, src in cell.edges[2 * i: 2 * i + 2])
    last = max(depth.values()) + 1
    layers = [[s for s in depth if depth[s] == d] for d in range(last)] + [[-1]]
    return [layer for layer in layers if layer]


def _positions(cell: CellGenotype) -> dict[int, tuple[float, float]]:
    """x by layer, y spread within the layer and ordered by the mean height of each node's inputs."""
    pos: dict[int, tuple[float, float]] = {}
    inputs = {i + 2: [src for _, src in cell.edges[2 * i: 2 * i + 2]] for i in range(cell.nodes)}
    inputs[-1] = list(cell.concat)
    for x, layer in enumerate(_layers(cell)):
        if x:  # barycentre ordering keeps edges from crossing where it can
            layer = sorted(layer, key=lambda s: -sum(pos[p][1] for p in inputs[s]) / len(inputs[s]))
        for j, s in enumerate(layer):
            pos[s] = (x * LAYER_DX, (len(layer) - 1) / 2 - j)
    return pos


def _label(s: int) -> str:
    return {0: "$c_{k-2}$", 1: "$c_{k-1}$", -1: "$c_{k}$"}.get(s, str(s - 2))


def _cell_figure(cell: CellGenotype, title: str):
    pos = _positions(cell)
    xs, ys = [p[0] for p in pos.values()], [p[1] for p in pos.values()]
    width, height = max(xs) - min(xs) + 1.6, max(ys) - min(ys) + 1.4
    fig = _mpl.new_figure(max(4.0, 1.1 * width), max(2.4, 1.1 * height + 0.4))
    from matplotlib.patches import FancyBboxPatch  # after new_figure, which explains its absence

    ax = fig.add_subplot()
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    if title:
        ax.set_title(title, fontsize=12)
    boxes = {}
    for s, (x, y) in pos.items():
        fill = INPUT_FILL if s in (0, 1) else OUTPUT_FILL if s == -1 else NODE_FILL
        boxes[s] = FancyBboxPatch((x - BOX_W / 2, y - BOX_H / 2), BOX_W, BOX_H, fc=fill, ec="black",
                                  lw=1.3, boxstyle="round,pad=0,rounding_size=0.12", zorder=3)
        ax.add_patch(boxes[s])
        ax.text(x, y, _label(s), ha="center", va="center", fontsize=12, zorder=4)
    seen: dict[tuple[int, int], int] = {}
    for k, (op, src) in enumerate(cell.edges):
        _edge(ax, pos, boxes, src, k // 2 + 2, op, seen)
    for c in cell.concat:
        _edge(ax, pos, boxes, c, -1, None, seen)
    return fig


def _edge(ax, pos, boxes, u: int, v: int, op: str | None, seen: dict) -> None:
    from matplotlib.patches import FancyArrowPatch

    (x0, y0), (x1, y1) = pos[u], pos[v]
    repeat = seen[(u, v)] = seen.get((u, v), -1) + 1
    others = [p for s, p in pos.items() if s not in (u, v)]
    rad = _bend((x0, y0), (x1, y1), others) + 0.2 * repeat  # a repeated edge gets its own arc
    color, lw = (op_color(op), 1.4) if op else ("0.6", 1.0)
    ax.add_patch(FancyArrowPatch(
        (x0, y0), (x1, y1), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>", mutation_scale=11,
        color=color, lw=lw, patchA=boxes[u], patchB=boxes[v], zorder=2))
    if op:  # at the midpoint of arc3's quadratic Bezier, whose tangent there is parallel to the
        # chord (equal aspect: data directions are display directions)
        mx, my = (x0 + x1) / 2 + rad * (y1 - y0) / 2, (y0 + y1) / 2 - rad * (x1 - x0) / 2
        angle = math.degrees(math.atan2(y1 - y0, x1 - x0))
        ax.text(mx, my, op, ha="center", va="center", fontsize=8, color=color, zorder=4,
                rotation=angle, rotation_mode="anchor",
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.9))


def _bend(p0, p1, others) -> float:
    """The arc3 curvature whose arc from p0 to p1 crosses the fewest other node boxes, preferring
    straighter arcs and, on ties, arcs bending away from the middle of the drawing."""
    (x0, y0), (x1, y1) = p0, p1
    outward = 1.0 if (y0 + y1) / 2 <= 0 else -1.0  # rad > 0 bends right of travel: down, going right

    def cost(rad):
        hits = 0
        for t in (i / 20 for i in range(1, 20)):
            cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
            x = (1 - t) ** 2 * x0 + 2 * t * (1 - t) * cx + t * t * x1
            y = (1 - t) ** 2 * y0 + 2 * t * (1 - t) * cy + t * t * y1
            hits += any(abs(x - bx) < BOX_W / 2 + 0.15 and abs(y - by) < BOX_H / 2 + 0.15
                        for bx, by in others)
        return hits, abs(rad), rad * outward < 0

    return min((sign * r for r in (0.0, 0.2, 0.35, 0.5) for sign in (outward, -outward)), key=cost)
