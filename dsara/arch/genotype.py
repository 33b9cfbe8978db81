"""Genotypes: the discrete cells a search derives, and the published ones.

A cell genotype lists, for each intermediate node, its two incoming edges as ``(op, input)`` where
input 0 and 1 are the cell's two inputs and input k >= 2 is intermediate node k - 2; ``concat`` lists
the states concatenated into the output. DARTS-style text such as
``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)`` is parsed with `ast`
and checked node by node: it is never evaluated.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import torch

from ..errors import DsaraError
from .ops import PARAMETER_FREE, check_op

EDGES_PER_NODE = 2  # DARTS keeps the two strongest incoming edges of every node


@dataclass(frozen=True, eq=False)
class CellGenotype:
    """Equality compares each node's two edges as a multiset: DARTS lists the stronger edge
    first, and the order of a node's edges does not change the network it describes."""

    edges: tuple[tuple[str, int], ...]  # 2 per intermediate node, in node order
    concat: tuple[int, ...]

    def _key(self) -> tuple:
        nodes = tuple(tuple(sorted(self.edges[k: k + EDGES_PER_NODE]))
                      for k in range(0, len(self.edges), EDGES_PER_NODE))
        return nodes, tuple(self.concat)

    def __eq__(self, other) -> bool:
        return isinstance(other, CellGenotype) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def nodes(self) -> int:
        return len(self.edges) // EDGES_PER_NODE

    def validate(self, where: str = "genotype") -> CellGenotype:
        if not self.edges or len(self.edges) % EDGES_PER_NODE:
            raise DsaraError(f"{where}: a cell needs {EDGES_PER_NODE} edges per node, "
                             f"got {len(self.edges)} edges")
        for k, (op, src) in enumerate(self.edges):
            node = k // EDGES_PER_NODE
            check_op(op, where)
            if not isinstance(src, int) or isinstance(src, bool) or not 0 <= src < node + 2:
                raise DsaraError(f"{where}: edge {k} ({op!r}, {src!r}) of node {node + 2} reads "
                                 f"state {src!r}, which does not exist (valid: 0..{node + 1})")
        for c in self.concat:
            if not isinstance(c, int) or not 0 <= c < self.nodes + 2:
                raise DsaraError(f"{where}: concat index {c!r} does not exist "
                                 f"(valid: 0..{self.nodes + 1})")
        if not self.concat:
            raise DsaraError(f"{where}: concat is empty")
        return self

    def parameter_free(self) -> int:
        """How many kept edges are parameter-free ops (the DARTS collapse indicator)."""
        return sum(op in PARAMETER_FREE for op, _ in self.edges)

    def to_dict(self) -> dict:
        return {"edges": [[op, src] for op, src in self.edges], "concat": list(self.concat)}

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "genotype") -> CellGenotype:
        try:
            edges = tuple((str(op), src) for op, src in d["edges"])
            concat = tuple(d["concat"])
        except (KeyError, TypeError, ValueError):
            raise DsaraError(f"{where}: expected {{'edges': [[op, input], ...], 'concat': "
                             f"[...]}}, got {d!r:.120}") from None
        return cls(edges, concat).validate(where)


@dataclass(frozen=True)
class Genotype:
    """The genotype of every cell type of an architecture, e.g. normal/reduce or accurate/reduce/robust."""

    cells: Mapping[str, CellGenotype]

    def __getitem__(self, cell_type: str) -> CellGenotype:
        if cell_type not in self.cells:
            raise DsaraError(f"the genotype has no cell of type {cell_type!r}; it has: "
                             f"{', '.join(self.cells)}")
        return self.cells[cell_type]

    def to_dict(self) -> dict:
        return {t: c.to_dict() for t, c in self.cells.items()}

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "genotype") -> Genotype:
        if not isinstance(d, Mapping) or not d:
            raise DsaraError(f"{where}: expected a table of cell types, got {d!r:.80}")
        return cls({t: CellGenotype.from_dict(c, f"{where}.{t}") for t, c in d.items()})

    def to_text(self) -> str:
        """The DARTS text form, e.g. ``Genotype(normal=[...], normal_concat=[2, 3, 4, 5], ...)``."""
        parts = []
        for t, c in self.cells.items():
            parts.append(f"{t}={[tuple(e) for e in c.edges]!r}")
            parts.append(f"{t}_concat={list(c.concat)!r}")
        return f"Genotype({', '.join(parts)})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Genotype) and dict(self.cells) == dict(other.cells)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.cells.items())))


def parse_genotype(text: str) -> Genotype:
    """Parse DARTS-style genotype text without evaluating it."""
    where = "genotype text"
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise DsaraError(f"{where} is not valid: {e.msg} at column {e.offset}") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id == "Genotype" and not call.args):
        raise DsaraError(f"{where} must be Genotype(name=[...], name_concat=..., ...) with "
                         "keyword arguments only")
    fields = {}
    for kw in call.keywords:
        if kw.arg is None or kw.arg in fields:
            raise DsaraError(f"{where}: bad or repeated keyword {kw.arg!r}")
        fields[kw.arg] = kw.value
    cells = {}
    for name, node in fields.items():
        if name.endswith("_concat"):
            continue
        edges = tuple(_edge(e, f"{where} {name}") for e in _sequence(node, f"{where} {name}"))
        concat_node = fields.get(f"{name}_concat")
        if concat_node is None:
            raise DsaraError(f"{where}: {name} has no {name}_concat")
        concat = _concat(concat_node, f"{where} {name}_concat")
        cells[name] = CellGenotype(edges, concat).validate(f"{where} {name}")
    orphans = [n for n in fields if n.endswith("_concat") and n[: -len("_concat")] not in cells]
    if orphans:
        raise DsaraError(f"{where}: {orphans[0]} has no matching cell list")
    if not cells:
        raise DsaraError(f"{where} has no cells")
    return Genotype(cells)


def _sequence(node, where) -> list:
    if not isinstance(node, (ast.List, ast.Tuple)):
        raise DsaraError(f"{where}: expected a list literal, got {ast.unparse(node)[:60]!r}")
    return node.elts


def _int(node, where) -> int:
    if not (isinstance(node, ast.Constant) and type(node.value) is int):
        raise DsaraError(f"{where}: expected an integer literal, got {ast.unparse(node)[:60]!r}")
    return node.value


def _edge(node, where) -> tuple[str, int]:
    elts = _sequence(node, where)
    if len(elts) != 2 or not (isinstance(elts[0], ast.Constant) and isinstance(elts[0].value, str)):
        raise DsaraError(f"{where}: expected ('op_name', input), got {ast.unparse(node)[:60]!r}")
    return elts[0].value, _int(elts[1], where)


def _concat(node, where) -> tuple[int, ...]:
    if isinstance(node, ast.Call):  # only range(a, b) with integer literals
        if not (isinstance(node.func, ast.Name) and node.func.id == "range" and not node.keywords
                and len(node.args) in (1, 2)):
            raise DsaraError(f"{where}: only range(a, b) or a list of integers is allowed, got "
                             f"{ast.unparse(node)[:60]!r}")
        return tuple(range(*(_int(a, where) for a in node.args)))
    return tuple(_int(e, where) for e in _sequence(node, where))


def derive(alphas: Mapping[str, torch.Tensor], ops: list[str], nodes: int,
           edge_weights: Mapping[str, torch.Tensor] | None = None,
           skip_cap: int | None = None, capped: tuple[str, ...] = ()) -> Genotype:
    """DARTS derivation: per node keep the 2 strongest incoming edges, each with its best op.

    Edge strength is the largest softmax weight of a non-`none` op on that edge, times the edge's
    weight where `edge_weights` gives one per edge (PC-DARTS: softmax(beta) over a node's inputs). A node's edges are
    listed strongest first, ties to the lower input (DARTS' stable `sorted`), as the published
    cells are written.

    `skip_cap` (opt-in, None = off) is P-DARTS' architecture refinement (Chen et al., "Progressive
    Differentiable Architecture Search", ICCV 2019, Sec. 3.3; their train_search.py
    `delete_min_sk_prob`): while a cell of the types in `capped` derives more than `skip_cap`
    skip connections, the smallest remaining skip_connect weight of that cell is set to 0 and the
    cell is derived again. P-DARTS caps the normal cells at M = 2; a remedy for DARTS' collapse
    to parameter-free ops, never the default.
    """
    cells = {}
    for cell_type, alpha in alphas.items():
        w = torch.softmax(alpha.detach().float().cpu(), dim=-1)  # (edges, ops)
        if edge_weights is not None and cell_type in edge_weights:
            w = w * edge_weights[cell_type].detach().float().cpu()[:, None]
        cell = _derive_cell(w, ops, nodes)
        if skip_cap is not None and cell_type in capped:
            cell = _cap_skips(w, ops, nodes, skip_cap, cell)
        cells[cell_type] = cell
    return Genotype(cells)


def _derive_cell(w: torch.Tensor, ops: list[str], nodes: int) -> CellGenotype:
    """One cell from its op weights `w` (edges, ops)."""
    w = w.clone()
    if "none" in ops:
        w[:, ops.index("none")] = -1.0
    edges, start = [], 0
    for node in range(nodes):
        n_in = node + 2
        best_w, best_op = w[start: start + n_in].max(dim=-1)
        strength = best_w.tolist()
        keep = sorted(range(n_in), key=lambda j: -strength[j])[:EDGES_PER_NODE]
        edges += [(ops[int(best_op[j])], j) for j in keep]
        start += n_in
    return CellGenotype(tuple(edges), tuple(range(2, nodes + 2)))


def _cap_skips(w: torch.Tensor, ops: list[str], nodes: int, cap: int, cell: CellGenotype
               ) -> CellGenotype:
    if "skip_connect" not in ops:
        return cell
    skip, w = ops.index("skip_connect"), w.clone()
    while sum(op == "skip_connect" for op, _ in cell.edges) > cap:
        alive = w[:, skip] > 0
        weakest = torch.where(alive, w[:, skip], torch.inf).argmin()
        w[weakest, skip] = 0.0
        cell = _derive_cell(w, ops, nodes)
    return cell


def n_edges(nodes: int) -> int:
    """Edges of a supernet cell: node k (0-based) reads the 2 inputs and the k earlier nodes."""
    return sum(2 + k for k in range(nodes))


# --- published cells --------------------------------------------------------------------------

# Which layout a published genotype is retrained with: the space whose cell types it uses.
_PUBLISHED_SPACE = {"normal": "darts", "accurate": "dsara"}
ALIASES = {"DSARA": "ARNAS"}


def published() -> dict[str, Genotype]:
    """The published cells shipped with dsara, parsed from their authors' text form."""
    text = resources.files("dsara.arch").joinpath("published_cells.txt").read_text(encoding="utf-8")
    cells = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, body = line.partition("=")
        cells[name.strip()] = parse_genotype(body)
    return cells


def published_space(genotype: Genotype) -> str:
    """The search space whose layout a published genotype is retrained with."""
    for cell_type, space in _PUBLISHED_SPACE.items():
        if cell_type in genotype.cells:
            return space
    return "darts"


def get_published(name: str) -> Genotype:
    cells = published()
    key = ALIASES.get(name.upper(), name.upper())
    if key not in cells:
        raise DsaraError(f"unknown built-in cell {name!r}; built-ins: "
                         f"{', '.join(list(cells) + list(ALIASES))}")
    return cells[key]
