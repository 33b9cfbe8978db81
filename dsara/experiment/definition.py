"""Experiment definitions: which architecture sources to compare, over which seeds, trained and
evaluated how. A definition is a TOML file in `experiments/` (usable by name) or anywhere::

    description = "..."
    seeds = [0, 1]             # every source runs once per seed (a source may list its own)
    params = "1.2M"            # parameter budget of every retrained network (auxiliary excluded)
    cells = 20                 # cells of every retrained cell network (baselines keep their depth)

    [data]
    dataset = "cifar10"        # the folder comes from --data-root or $DSARA_DATA_ROOT

    [search]                   # SearchConfig fields shared by the sources that search
    space = "dsara"
    epochs = 50

    [sources.dsara]            # one table per source; the name labels the table row
    kind = "dsara"             # see KINDS
    [sources.random]
    kind = "random"
    count = 10                 # random cells per seed
    [sources.ARNAS]
    kind = "published"
    cell = "ARNAS"
    [sources.resnet18]
    kind = "baseline"
    model = "resnet18"

    [retrain]                  # TrainConfig fields: one recipe for every architecture
    epochs = 200

    [criteria]                 # when the run can answer its question (judge.py; defaults shown)
    alpha_moved = 50           # max |delta alpha| >= 50 x alpha_init_std in every cell type
    min_clean = 0.40           # every retrained network on the test subset ...
    min_pgd20 = 0.20           # ... far from chance
    min_n_test = 2000
    min_autoattack_n = 500

    [evaluate]
    attacks = ["clean", "pgd20", "cw"]
    eps = "8/255"
    n_test = 10000             # seeded, class-stratified subset of the test split (same for all)
    autoattack_n = 1000        # AutoAttack on a fixed subset of those (default 1000); 0 = skip

Every (source, seed) pair -- (source, seed, cell) for random cells -- is one *unit*: search if the
source needs one, derive, retrain at the parameter budget, evaluate on the test split.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DsaraError
from ..utils import resources
from ..utils.config import Fields, read_toml
from .judge import Criteria, criteria_from_dict

# kind -> SearchConfig changes that make it (None: the source does not search)
SEARCHING = {
    "dsara": {},  # the two-stage DSARA search with the [search] schedule
    "dsara-stage1": {"stage1": "all"},  # adversarial alpha only: stage 1 for every epoch
    "dsara-mo": {"stage1_epochs": 0},  # multi-objective only: stage 2 from the first epoch
    "darts": {"stage1": "all", "pgd_steps": 0},  # clean DARTS: weights and alpha on clean CE
}
KINDS = (*SEARCHING, "random", "published", "baseline")
DERIVATION_ONLY = {"skip_cap", "selection", "pt_images", "pt_measure"}  # SearchConfig fields that change the derived cells, not the search
DEFAULT_ATTACKS = ("clean", "pgd20", "cw")
DEFAULT_AUTOATTACK_N = 1000


@dataclass(frozen=True)
class Source:
    name: str  # the row label, e.g. "dsara", "random", "ARNAS"
    kind: str  # one of KINDS
    seeds: tuple[int, ...]
    count: int = 1  # random: cells per seed
    cell: str = ""  # published: built-in cell name
    model: str = ""  # baseline: registry name
    search: dict[str, Any] = field(default_factory=dict)  # extra SearchConfig fields
    # another searching source whose searches (same seeds) this one derives again with its own
    # derivation options (search.skip_cap) instead of searching: the same alpha, other cells
    reuse: str = ""

    @property
    def searches(self) -> bool:
        return self.kind in SEARCHING


@dataclass(frozen=True)
class Unit:
    """One cell of the grid: a source at a seed (and, for random cells, an index)."""

    source: str
    seed: int
    index: int | None = None  # random cells only

    @property
    def key(self) -> str:
        return f"{self.source}/s{self.seed}" + ("" if self.index is None else f"/c{self.index}")

    @property
    def dir_name(self) -> str:
        return f"{self.source}/seed-{self.seed}" + ("" if self.index is None
                                                   else f"-cell-{self.index}")

    @classmethod
    def from_key(cls, key: str) -> Unit:
        parts = key.split("/")
        index = int(parts[2][1:]) if len(parts) == 3 else None
        return cls(parts[0], int(parts[1][1:]), index)


@dataclass
class Evaluation:
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    eps: str = "8/255"  # L-inf radius, [0, 1] pixel units
    n_test: int | None = None  # test images (seeded, class-stratified); None: the whole split
    # images of the AutoAttack subset (a subset of the n_test); 0: none. On by default: the
    # first 1,000 (or all n_test) images, so that the worst case includes AutoAttack
    autoattack_n: int = DEFAULT_AUTOATTACK_N
    batch_size: int = 256
    seed: int = 0  # which test subset and the attacks' random starts: one for every unit


@dataclass
class Experiment:
    sources: dict[str, Source]
    seeds: tuple[int, ...]
    data: dict[str, Any]  # dataset, synthetic (TrainConfig / SearchConfig data fields)
    search: dict[str, Any]
    retrain: dict[str, Any]
    evaluation: Evaluation
    params: int | None = None
    cells: int | None = None
    max_retry: int = 2
    criteria: Criteria = field(default_factory=Criteria)  # when the run can answer (judge.py)
    description: str = ""
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def units(self) -> list[Unit]:
        """Every unit, round-robin over the sources (each source's first run, then each one's
        second, ...): workers take them in this order, so a stopped experiment has a bit of
        every source instead of all of the first ones."""
        runs = [[Unit(s.name, seed, i if s.kind == "random" else None) for seed in s.seeds
                 for i in range(s.count if s.kind == "random" else 1)]
                for s in self.sources.values()]
        return [r[k] for k in range(max(map(len, runs))) for r in runs if k < len(r)]

    @property
    def sha256(self) -> str:
        text = json.dumps(self.raw, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def search_config(self, source: Source, seed: int, out: str | Path, data_root: str | None):
        """The SearchConfig of a searching source at a seed."""
        from ..search import SearchConfig

        raw = {**self.search, **source.search, **_data_fields(self.data, data_root)}
        for key, value in SEARCHING[source.kind].items():
            if value == "all":  # stage 1 for the whole search
                raw["stage1_epochs"] = int(raw.get("epochs", SearchConfig.epochs))
            else:
                raw[key] = value
        raw |= {"seed": seed, "out": str(out)}
        return SearchConfig.from_dict(raw, f"{self.source} [sources.{source.name}] search")

    def train_config(self, arch: str, seed: int, out: str | Path, data_root: str | None):
        """The TrainConfig of a unit's retrain: [retrain] with the budget, cells and seed."""
        from ..train.config import config_from_dict

        raw = {**self.retrain, **_data_fields(self.data, data_root), "arch": str(arch),
               "out": str(out), "seed": seed}
        if self.params is not None:
            raw["params"] = self.params
        if self.cells is not None and not _is_baseline(arch):
            raw["cells"] = self.cells
        return config_from_dict(raw, f"{self.source} [retrain]")


def _is_baseline(arch: str) -> bool:
    from ..arch.baselines import baseline_name

    return baseline_name(arch) is not None and not Path(arch).is_file()


def _data_fields(data: dict[str, Any], data_root: str | None) -> dict[str, Any]:
    out = dict(data)
    if data_root is not None:
        out["data_root"] = str(data_root)
    return out


def experiment_dirs() -> list[Path]:
    return resources.data_dirs("experiments")


def list_experiments() -> list[str]:
    return resources.names("experiments")


def find_experiment(name_or_path: str | Path) -> Path:
    found = resources.find("experiments", name_or_path)
    if found is not None:
        return found
    raise DsaraError(f"experiment definition {str(name_or_path)!r} not found; known: "
                     f"{', '.join(list_experiments()) or '(none)'} (or give a path to a .toml)")


def load_experiment(name_or_path: str | Path) -> Experiment:
    path = find_experiment(name_or_path)
    return experiment_from_dict(read_toml(path), str(path))


def experiment_from_dict(raw: dict[str, Any], where: str = "experiment") -> Experiment:
    """Parse and validate: every source's search and retrain config is built once here."""
    from ..arch.budget import parse_params

    f = Fields(raw, where)
    seeds = _seeds(f.get("seeds", list, [0]), where)
    params = f.get("params", (str, int), None)
    sources_raw = f.get("sources", dict, check=lambda v: len(v) > 0,
                        hint="declare at least one [sources.NAME] table")
    exp = Experiment(
        sources={n: _source(n, t, seeds, f"{where} [sources.{n}]")
                 for n, t in sources_raw.items()},
        seeds=seeds,
        data=dict(f.get("data", dict, {})),
        search=dict(f.get("search", dict, {})),
        retrain=dict(f.get("retrain", dict, {})),
        evaluation=_evaluation(f.get("evaluate", dict, {}), f"{where} [evaluate]"),
        params=None if params is None else parse_params(params),
        cells=f.get("cells", int, None, check=lambda v: v >= 1, hint="cells must be >= 1"),
        max_retry=f.get("max_retry", int, 2, check=lambda v: v >= 0, hint="must be >= 0"),
        criteria=criteria_from_dict(f.get("criteria", dict, {}), f"{where} [criteria]"),
        description=f.get("description", str, ""),
        source=where,
        raw=raw,
    )
    f.finish()
    for key in ("out", "seed", "data_root"):
        if key in exp.search or key in exp.retrain or key in exp.data:
            raise DsaraError(f"{where}: {key} is set per unit (run directories, seeds) or on "
                             "the command line (--data-root); remove it from the file")
    _check_configs(exp)
    return exp


def _seeds(value: list, where: str) -> tuple[int, ...]:
    if not value or not all(isinstance(s, int) and not isinstance(s, bool) for s in value) \
            or len(set(value)) != len(value):
        raise DsaraError(f"{where}: seeds must be a non-empty list of distinct integers, got "
                         f"{value!r}")
    return tuple(value)


def _source(name: str, table: Any, seeds: tuple[int, ...], where: str) -> Source:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise DsaraError(f"{where}: source names become folder names: letters, digits, '_', '-' "
                         "or '.', starting with a letter or digit")
    f = Fields(table, where)
    kind = f.get("kind", str, check=lambda v: v in KINDS, hint=f"kind is one of {', '.join(KINDS)}")
    s = Source(
        name=name, kind=kind,
        seeds=_seeds(f.get("seeds", list, list(seeds)), where),
        count=f.get("count", int, 1, check=lambda v: v >= 1, hint="count must be >= 1"),
        cell=f.get("cell", str, ""), model=f.get("model", str, ""),
        search=dict(f.get("search", dict, {})),
        reuse=f.get("reuse", str, ""),
    )
    f.finish()
    if s.reuse and set(s.search) - DERIVATION_ONLY:
        raise DsaraError(f"{where}: a source that reuses {s.reuse!r}'s searches only derives "
                         f"again; its search table may set {', '.join(sorted(DERIVATION_ONLY))}")
    needs = {"published": "cell", "baseline": "model"}.get(kind)
    if needs and not getattr(s, needs):
        raise DsaraError(f"{where}: a {kind} source needs {needs} = \"...\"")
    if s.search and not s.searches:
        raise DsaraError(f"{where}: search applies to sources that search ({', '.join(SEARCHING)})")
    return s


def _evaluation(table: Any, where: str) -> Evaluation:
    from ..attacks.registry import parse_attacks

    f = Fields(table, where)
    ev = Evaluation(
        attacks=tuple(parse_attacks(f.get("attacks", list, list(DEFAULT_ATTACKS)))),
        eps=str(f.get("eps", (str, float, int), "8/255")),
        n_test=f.get("n_test", int, None, check=lambda v: v >= 10, hint="n_test must be >= 10"),
        autoattack_n=f.get("autoattack_n", int, None, check=lambda v: v >= 0,
                           hint="must be >= 0"),
        batch_size=f.get("batch_size", int, 256, check=lambda v: v >= 1, hint="must be >= 1"),
        seed=f.get("seed", int, 0),
    )
    f.finish()
    if ev.autoattack_n is None:  # on by default, capped by the test subset
        ev.autoattack_n = min(DEFAULT_AUTOATTACK_N, ev.n_test or DEFAULT_AUTOATTACK_N)
    if "autoattack" in ev.attacks:
        raise DsaraError(f"{where}: AutoAttack runs on its own subset: set autoattack_n instead "
                         "of listing it in attacks")
    if ev.n_test is not None and ev.autoattack_n > ev.n_test:
        raise DsaraError(f"{where}: autoattack_n ({ev.autoattack_n}) must be <= n_test "
                         f"({ev.n_test})")
    if ev.autoattack_n:
        from ..attacks.autoattack import _import_autoattack

        _import_autoattack()  # one line before hours of work if the library is missing
    return ev


def _check_reuse(exp: Experiment, s: Source, where: str) -> None:
    names = list(exp.sources)
    other = exp.sources.get(s.reuse)
    if other is None or not other.searches or other.reuse:
        raise DsaraError(f"{where}: reuse = {s.reuse!r} must name a source that searches itself; "
                         f"sources: {', '.join(names)}")
    if other.kind != s.kind or not set(s.seeds) <= set(other.seeds):
        raise DsaraError(f"{where}: reuse needs the same kind ({other.kind}) and seeds among "
                         f"{list(other.seeds)}")
    if names.index(s.reuse) > names.index(s.name):
        raise DsaraError(f"{where}: declare [sources.{s.reuse}] before it, so that its searches "
                         "come first in the units' order")


def _check_configs(exp: Experiment) -> None:
    """Build every source's configs now: a typo fails at create, not after hours of runs."""
    from ..arch.sample import sample_genotypes
    from ..arch.space import load_space
    from ..attacks.base import parse_eps

    parse_eps(exp.evaluation.eps)
    for s in exp.sources.values():
        where = f"{exp.source} [sources.{s.name}]"
        if s.reuse:
            _check_reuse(exp, s, where)
        arch = {"published": s.cell, "baseline": s.model}.get(s.kind, "ARNAS")
        if s.searches:
            exp.search_config(s, s.seeds[0], "probe", None)
        if s.kind == "random":
            sample_genotypes(load_space(exp.search.get("space", "dsara")), s.count, s.seeds[0])
        if s.kind == "published":
            from ..arch.genotype import get_published

            get_published(s.cell)
        try:
            exp.train_config(arch, s.seeds[0], "probe", None).resolved()
        except DsaraError as e:
            raise DsaraError(f"{where}: {e}") from None


