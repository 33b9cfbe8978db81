"""Search spaces: the op set, the cell types and the macro layout (stages with width and depth knobs).

A space is a TOML file in `search_spaces/` (usable by name) or anywhere (usable by path)::

    name = "dsara"
    ops = ["skip_connect", "sep_conv_3x3", ...]
    cell_types = ["accurate", "reduce", "robust"]
    reduce_cell_type = "reduce"     # the type of the reduction cell between two stages
    nodes = 4                       # intermediate nodes per cell
    stem_multiplier = 3             # stem channels = stem_multiplier * C

    [[stages]]                      # one table per stage (RobustWRN knobs)
    depth = 2                       # normal cells in the stage at the proxy size
    width = 1.0                     # channels as a multiple of C
    cell_type = "accurate"

    normalize = false               # (x - mean) / std inside the model? (DSARA: raw [0, 1])

    [proxy]                         # the supernet searched
    C = 24
    [final]                         # the network retrained from the searched genotype
    C = 64
    cells = 20
    auxiliary_weight = 0.4
    drop_path = 0.2

A reduction cell sits between two stages: it halves the resolution and moves to the next stage's width.
At another total cell count L, stages of equal depth place their reductions where DARTS does, at
i*L//S for S stages (L//3 and 2L//3: 16 cells -> reductions at cells 5 and 10); stages of unequal
depth (a RobustWRN knob) share the normal cells out in proportion to their depths.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DsaraError
from ..utils import resources
from ..utils.config import Fields, apply_overrides, read_toml
from . import activations
from .ops import OPS, check_op

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Stage:
    depth: int  # normal cells in this stage
    width: float  # channels as a multiple of C
    cell_type: str


@dataclass(frozen=True)
class CellSpec:
    """One cell of a built network: its type, output channels per node, and whether it reduces."""

    cell_type: str
    C: int
    reduction: bool


@dataclass(frozen=True)
class Macro:
    """The macro layout of one network at one size: stem, stages, reductions, head."""

    C: int
    stages: tuple[Stage, ...]
    reduce_cell_type: str = "reduce"
    stem_multiplier: int = 3
    nodes: int = 4
    num_classes: int = 10
    auxiliary_weight: float = 0.0  # 0 = no auxiliary head
    drop_path: float = 0.0  # final drop-path probability (ramped up over training)
    # (x - mean) / std as the model's first step. True is what dsara did before the option existed,
    # so a file without the key rebuilds the network it was written for.
    normalize: bool = True
    mean: tuple[float, ...] = CIFAR10_MEAN  # the dataset's per-channel statistics, of [0, 1]
    std: tuple[float, ...] = CIFAR10_STD  # pixels; their length is the input channels
    # per cell type: a name, a table of names, or (a supernet's) candidates; see dsara.arch.activations
    activation: Any = activations.DEFAULT
    activation_options: Any = None  # {activation: {option: value}}, e.g. {"sparta": {"kernel": 5}}

    @property
    def cells(self) -> int:
        return sum(s.depth for s in self.stages) + len(self.stages) - 1

    def stage_channels(self, stage: Stage) -> int:
        return channels(self.C, stage.width)

    def cell_plan(self) -> list[CellSpec]:
        """Cells in order: each stage's normal cells, a reduction cell before every later stage."""
        plan: list[CellSpec] = []
        for i, stage in enumerate(self.stages):
            C_stage = self.stage_channels(stage)
            if i > 0:
                plan.append(CellSpec(self.reduce_cell_type, C_stage, True))
            plan += [CellSpec(stage.cell_type, C_stage, False)] * stage.depth
        return plan

    def cell_types(self) -> list[str]:
        """Cell types used by this layout, in order of first use."""
        return list(dict.fromkeys(c.cell_type for c in self.cell_plan()))

    def activations(self) -> dict[str, tuple[str, ...]]:
        """Activation candidates per cell type (one name each in a discrete network)."""
        return activations.resolve(self.activation, self.cell_types(), "macro activation")

    def resized(self, cells: int | None = None, channels: int | None = None) -> Macro:
        """The same layout with another total cell count and/or C."""
        out = self
        if channels is not None:
            if channels <= 0:
                raise DsaraError(f"channels must be positive, got {channels}")
            out = dataclasses.replace(out, C=int(channels))
        if cells is not None and cells != self.cells:
            depths = stage_depths([s.depth for s in self.stages], cells)
            out = dataclasses.replace(out, stages=tuple(
                dataclasses.replace(s, depth=d) for s, d in zip(self.stages, depths)))
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = [dataclasses.asdict(s) for s in self.stages]
        d["mean"], d["std"] = list(self.mean), list(self.std)
        # left out at their defaults, so that files and checkpoint specs of ReLU networks read
        # exactly as before the activation setting existed
        if d["activation"] == activations.DEFAULT:
            del d["activation"]
        if not d["activation_options"]:
            del d["activation_options"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "macro") -> Macro:
        f = Fields(d, where)
        stages = tuple(_stage(s, f"{where}.stages.{i}")
                       for i, s in enumerate(f.get("stages", list)))
        macro = cls(
            C=f.get("C", int, check=lambda v: v > 0, hint="C must be positive"),
            stages=stages,
            reduce_cell_type=f.get("reduce_cell_type", str, "reduce"),
            stem_multiplier=f.get("stem_multiplier", int, 3, check=lambda v: v > 0,
                                  hint="must be positive"),
            nodes=f.get("nodes", int, 4, check=lambda v: v >= 1, hint="need at least 1 node"),
            num_classes=f.get("num_classes", int, 10, check=lambda v: v >= 2,
                              hint="need at least 2 classes"),
            auxiliary_weight=f.get("auxiliary_weight", float, 0.0, check=lambda v: v >= 0,
                                   hint="must be >= 0"),
            drop_path=f.get("drop_path", float, 0.0, check=lambda v: 0 <= v < 1,
                            hint="must be in [0, 1)"),
            normalize=f.get("normalize", bool, True),
            mean=tuple(f.get("mean", list, list(CIFAR10_MEAN))),
            std=tuple(f.get("std", list, list(CIFAR10_STD))),
            activation=f.get("activation", (str, list, dict), activations.DEFAULT),
            activation_options=activations.check_options(
                f.get("activation_options", dict, None), where) or None,
        )
        f.finish()
        if not stages:
            raise DsaraError(f"{where}: stages is empty; a network needs at least one stage")
        macro.activations()  # names and cell types are valid
        return macro


def channels(C: int, width: float) -> int:
    """Channels of a stage: width x C, rounded, at least 1."""
    return max(1, int(round(width * C)))


def stage_depths(base: list[int], cells: int) -> list[int]:
    """Normal cells per stage of a `cells`-cell network whose stages have the depths `base` at
    another size. Equal depths: reductions at i*cells//S, i = 1..S-1, as DARTS places them
    (cells 6 and 13 of 20, 5 and 10 of 16); otherwise in proportion to `base` (`share_depths`)."""
    stages = len(base)
    if len(set(base)) > 1 or cells < 2 * stages - 1:
        return share_depths(base, cells - (stages - 1))  # (also says why too few cells fail)
    bounds = [-1] + [i * cells // stages for i in range(1, stages)] + [cells]
    return [bounds[i + 1] - bounds[i] - 1 for i in range(stages)]


def share_depths(base: list[int], total: int) -> list[int]:
    """Share `total` normal cells among stages in proportion to `base` (largest remainder, >= 1)."""
    if total < len(base):
        raise DsaraError(f"{total + len(base) - 1} cells cannot hold {len(base)} stages with at "
                         f"least one normal cell each; use at least {2 * len(base) - 1} cells")
    raw = [total * b / sum(base) for b in base]
    depths = [max(1, math.floor(r)) for r in raw]
    order = sorted(range(len(base)), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)
    i = 0
    while sum(depths) < total:
        depths[order[i % len(order)]] += 1
        i += 1
    while sum(depths) > total:  # only when the >= 1 floor pushed us over
        j = max(range(len(depths)), key=lambda k: depths[k])
        depths[j] -= 1
    return depths


def _stage(table: Mapping, where: str) -> Stage:
    f = Fields(table, where)
    stage = Stage(
        depth=f.get("depth", int, check=lambda v: v >= 1,
                    hint="a stage needs at least one normal cell"),
        width=f.get("width", float, check=lambda v: v > 0 and math.isfinite(v),
                    hint="width is a positive multiple of C"),
        cell_type=f.get("cell_type", str),
    )
    f.finish()
    return stage


@dataclass
class SearchSpace:
    """A search space: what the supernet may choose (ops per cell type) and its macro layout."""

    name: str
    ops: list[str]
    cell_types: list[str]
    stages: list[Stage]
    proxy_C: int
    final_C: int
    final_cells: int
    reduce_cell_type: str = "reduce"
    nodes: int = 4
    stem_multiplier: int = 3
    proxy_cells: int | None = None
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2
    normalize: bool = True  # input normalization inside the supernet and the final network
    description: str = ""
    source: str = ""
    activation: Any = activations.DEFAULT  # name, candidates, or a table per cell type
    activation_options: dict | None = None
    raw: dict = field(default_factory=dict, repr=False)

    def macro(self, C: int, cells: int | None, *, auxiliary_weight: float = 0.0,
              drop_path: float = 0.0, num_classes: int = 10,
              mean=CIFAR10_MEAN, std=CIFAR10_STD) -> Macro:
        base = Macro(C=C, stages=tuple(self.stages), reduce_cell_type=self.reduce_cell_type,
                     stem_multiplier=self.stem_multiplier, nodes=self.nodes,
                     num_classes=num_classes, auxiliary_weight=auxiliary_weight,
                     drop_path=drop_path, normalize=self.normalize, mean=tuple(mean),
                     std=tuple(std), activation=self.activation,
                     activation_options=self.activation_options)
        return base.resized(cells=cells)

    def proxy_macro(self, **kw) -> Macro:
        """The layout of the supernet searched (no auxiliary head, no drop-path)."""
        return self.macro(self.proxy_C, self.proxy_cells, **kw)

    def final_macro(self, **kw) -> Macro:
        """The layout of the network retrained from a genotype searched in this space."""
        return self.macro(self.final_C, self.final_cells, auxiliary_weight=self.auxiliary_weight,
                          drop_path=self.drop_path, **kw)

    def to_dict(self) -> dict[str, Any]:
        return self.raw


def space_dirs() -> list[Path]:
    """Where spaces are found by name: the checkout's `search_spaces/`, then the installed copy."""
    return resources.data_dirs("search_spaces")


def list_spaces() -> list[str]:
    return resources.names("search_spaces")


def find_space_file(name_or_path: str | Path) -> Path:
    found = resources.find("search_spaces", name_or_path)
    if found is not None:
        return found
    if resources.looks_like_path(name_or_path):
        raise DsaraError(f"search space file {Path(name_or_path)} does not exist; known spaces: "
                         f"{', '.join(list_spaces())}")
    raise DsaraError(f"unknown search space {str(name_or_path)!r}; known spaces: "
                     f"{', '.join(list_spaces())} (or give a path to a .toml file)")


def load_space(name_or_path: str | Path,
               overrides: Mapping[str, Any] | Iterable[str] | None = None) -> SearchSpace:
    """Load and validate a search space by name or path, with dotted overrides applied."""
    path = find_space_file(name_or_path)
    raw = apply_overrides(read_toml(path), overrides, where=str(path))
    return space_from_dict(raw, str(path))


def _ops(f: Fields, where: str) -> list[str]:
    """The space's candidate ops: known names, at least one besides 'none'."""
    ops = f.get("ops", list, check=lambda v: len(v) > 0, hint="list at least one op")
    for op in ops:
        if not isinstance(op, str):
            raise DsaraError(f"{where}: ops must be names, got {op!r}")
        check_op(op, where)
    if set(ops) <= {"none"}:
        raise DsaraError(f"{where}: ops need at least one op besides 'none'; known ops: "
                         f"{', '.join(OPS)}")
    return ops


def space_from_dict(raw: Mapping, where: str = "search space") -> SearchSpace:
    f = Fields(raw, where)
    ops = _ops(f, where)
    cell_types = f.get("cell_types", list, check=lambda v: len(v) > 0,
                       hint="list the cell types")
    reduce_type = f.get("reduce_cell_type", str, "reduce")
    stages_raw = f.get("stages", list, check=lambda v: len(v) > 0,
                       hint="declare at least one [[stages]] table")
    stages = [_stage(s, f"{where} [stages.{i}]") for i, s in enumerate(stages_raw)]
    for i, s in enumerate(stages):
        _check_cell_type(s.cell_type, cell_types, f"{where} [stages.{i}]")
    if len(stages) > 1:
        _check_cell_type(reduce_type, cell_types, f"{where} reduce_cell_type")
    proxy = Fields(f.get("proxy", dict), f"{where} [proxy]")
    final = Fields(f.get("final", dict), f"{where} [final]")
    positive = dict(check=lambda v: v > 0, hint="must be positive")
    space = SearchSpace(
        name=f.get("name", str, Path(where).stem),
        description=f.get("description", str, ""),
        ops=list(ops),
        cell_types=list(cell_types),
        stages=stages,
        reduce_cell_type=reduce_type,
        nodes=f.get("nodes", int, 4, check=lambda v: v >= 1, hint="need at least 1 node"),
        stem_multiplier=f.get("stem_multiplier", int, 3, **positive),
        normalize=f.get("normalize", bool, True),
        proxy_C=proxy.get("C", int, **positive),
        proxy_cells=proxy.get("cells", int, None, **positive),
        final_C=final.get("C", int, **positive),
        final_cells=final.get("cells", int, **positive),
        auxiliary_weight=final.get("auxiliary_weight", float, 0.4, check=lambda v: v >= 0,
                                   hint="must be >= 0"),
        drop_path=final.get("drop_path", float, 0.2, check=lambda v: 0 <= v < 1,
                            hint="must be in [0, 1)"),
        source=where,
        activation=f.get("activation", (str, list, dict), activations.DEFAULT),
        activation_options=activations.check_options(f.get("activation_options", dict, None),
                                                     where) or None,
        raw=dict(raw),
    )
    for fields in (proxy, final, f):
        fields.finish()
    space.proxy_macro().activations()  # sizes and activations must be buildable: fails early
    space.final_macro()
    return space


def _check_cell_type(name: str, known: list[str], where: str) -> None:
    bad = [t for t in known if not isinstance(t, str) or not t.isidentifier()]
    if bad:
        raise DsaraError(f"{where}: cell type {bad[0]!r} must be a plain name (letters, digits, _)")
    if name not in known:
        raise DsaraError(f"{where}: unknown cell type {name!r}; known cell types: "
                         f"{', '.join(known)}")
