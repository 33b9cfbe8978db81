"""Study definitions: what an Optuna sweep varies, what it measures, how it samples, how long.

A definition is a TOML file in `studies/` (usable by name) or anywhere (usable by path)::

    description = "..."

    [search]                      # the base search: SearchConfig fields (dsara search --config)
    space = "dsara"
    epochs = 10

    [params."stages.2.width"]     # one table per swept hyper-parameter
    type = "float"                # float | int | categorical
    low = 0.5
    high = 2.0
    step = 0.25                   # optional grid; or log = true
    [params.lam]
    type = "float"
    low = 0.01
    high = 1.0
    log = true
    [params."retrain.method"]     # retrain.FIELD: a field of the retrain objective's config
    type = "categorical"          # (needs kind = "retrain"), e.g. the training method
    choices = ["pgd-at", "trades", "iat"]

    [objective]
    kind = "retrain"              # supernet (arch-val figures) | retrain (short retrain, held-out)
    metrics = ["clean_acc", "pgd_acc"]   # maximized; two = a Pareto front
    pruner = "none"               # median: prune single-objective supernet studies per epoch
    [objective.retrain]           # TrainConfig fields of the short retrain
    epochs = 10

    [sampler]
    kind = "nsgaii"               # nsgaii | tpe | random
    seed = 0

    [budget]
    n_trials = 40                 # complete trials the study aims at, over all workers
    max_retry = 2                 # re-queues of a trial whose worker died
    resume_on_other_device = false  # a retry may continue a cuda-searched trial on a cpu (or back)

A parameter key is routed like `dsara search --set`: a SearchConfig field (``lam``,
``synthetic.noise``) or else a key of the search space (``stages.2.width``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..arch.space import load_space
from ..errors import DsaraError
from ..search import SearchConfig
from ..utils import resources
from ..utils.config import Fields, apply_overrides, read_toml

OBJECTIVES = ("supernet", "retrain")
METRICS = ("clean_acc", "pgd_acc")  # accuracies in [0, 1], both maximized
SAMPLERS = ("nsgaii", "tpe", "random")
PRUNERS = ("none", "median")
PARAM_TYPES = ("float", "int", "categorical")
CONFIG_FIELDS = {f.name for f in dataclasses.fields(SearchConfig)}
RETRAIN_PREFIX = "retrain."  # params named retrain.FIELD sweep the retrain objective's config


@dataclass(frozen=True)
class Param:
    """One swept hyper-parameter and its distribution."""

    name: str  # dotted target: a SearchConfig field or a search-space key
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step,
                                       log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1,
                                     log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def samples(self) -> list[Any]:
        """Values that must all make a valid search (checked when the definition is read)."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    @property
    def is_config(self) -> bool:
        return self.name.split(".")[0] in CONFIG_FIELDS

    @property
    def is_retrain(self) -> bool:
        """``retrain.method`` etc.: a field of the retrain objective's TrainConfig."""
        return self.name.startswith(RETRAIN_PREFIX)


@dataclass
class StudyDefinition:
    search: dict[str, Any]  # the base SearchConfig fields
    params: dict[str, Param]
    objective: str = "supernet"
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    retrain: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields of the retrain
    pruner: str = "none"  # none | median (single-objective supernet studies only)
    sampler: str = "nsgaii"
    seed: int = 0  # sampler seed; trial k of the study samples with seed + k
    population_size: int | None = None  # NSGA-II generation size; None: Optuna's default (50)
    n_trials: int = 20  # complete trials the study aims at, all workers together
    max_retry: int = 2  # re-queues of a trial whose worker died
    # a retry continues its trial's checkpoint on another device type (precision and random
    # streams change: the result is not the uninterrupted search's); off: refused, re-queued
    resume_on_other_device: bool = False
    description: str = ""
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def search_config(self, values: dict[str, Any], out: str | Path) -> SearchConfig:
        """The base search with swept values applied, writing to `out`."""
        values = {k: v for k, v in values.items() if not self.params[k].is_retrain}
        config = {k: v for k, v in values.items() if self.params[k].is_config}
        space = {k: v for k, v in values.items() if not self.params[k].is_config}
        raw = apply_overrides(self.search, config, where=self.source)
        raw["space_overrides"] = {**raw.get("space_overrides", {}), **space}
        raw["out"] = str(out)
        return SearchConfig.from_dict(raw, f"{self.source} [search]")

    def to_dict(self) -> dict[str, Any]:
        """The definition as stored on the study (the parsed TOML: plain JSON)."""
        return self.raw

    @property
    def sha256(self) -> str:
        return definition_hash(self.raw)


def definition_hash(raw: dict[str, Any]) -> str:
    """Hash of the parsed definition: comments and layout of the TOML text do not count."""
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def study_dirs() -> list[Path]:
    return resources.data_dirs("studies")


def list_definitions() -> list[str]:
    return resources.names("studies")


def find_definition(name_or_path: str | Path) -> Path:
    found = resources.find("studies", name_or_path)
    if found is not None:
        return found
    raise DsaraError(f"study definition {str(name_or_path)!r} not found; known definitions: "
                     f"{', '.join(list_definitions()) or '(none)'} (or give a path to a .toml)")


def load_definition(name_or_path: str | Path) -> StudyDefinition:
    path = find_definition(name_or_path)
    return definition_from_dict(read_toml(path), str(path))


def definition_from_dict(raw: dict[str, Any], where: str = "study definition") -> StudyDefinition:
    """Parse and validate: every parameter target and range is checked against a real search."""
    f = Fields(raw, where)
    search = f.get("search", dict, {})
    params_raw = f.get("params", dict, {})
    obj = Fields(f.get("objective", dict, {}), f"{where} [objective]")
    sam = Fields(f.get("sampler", dict, {}), f"{where} [sampler]")
    bud = Fields(f.get("budget", dict, {}), f"{where} [budget]")
    metrics = obj.get("metrics", list, list(METRICS),
                      check=lambda v: 0 < len(v) == len(set(v)) and set(v) <= set(METRICS),
                      hint=f"list one or two distinct metrics of {', '.join(METRICS)}")
    d = StudyDefinition(
        search=dict(search),
        params={k: parse_param(k, v, f"{where} [params.{json.dumps(k)}]")
                for k, v in params_raw.items()},
        objective=obj.get("kind", str, "supernet", check=lambda v: v in OBJECTIVES,
                          hint=f"kind is one of {', '.join(OBJECTIVES)}"),
        metrics=list(metrics),
        retrain=dict(obj.get("retrain", dict, {})),
        pruner=obj.get("pruner", str, "none", check=lambda v: v in PRUNERS,
                       hint=f"pruner is one of {', '.join(PRUNERS)}"),
        sampler=sam.get("kind", str, "nsgaii", check=lambda v: v in SAMPLERS,
                        hint=f"kind is one of {', '.join(SAMPLERS)}"),
        seed=sam.get("seed", int, 0),
        population_size=sam.get("population_size", int, None, check=lambda v: v >= 2,
                                hint="population_size must be >= 2"),
        n_trials=bud.get("n_trials", int, 20, check=lambda v: v >= 1, hint="must be >= 1"),
        max_retry=bud.get("max_retry", int, 2, check=lambda v: v >= 0, hint="must be >= 0"),
        resume_on_other_device=bud.get("resume_on_other_device", bool, False),
        description=f.get("description", str, ""),
        source=where,
        raw=raw,
    )
    for fields in (obj, sam, bud, f):
        fields.finish()
    if d.sampler == "nsgaii" and len(d.metrics) == 1:
        raise DsaraError(f"{where} [sampler]: nsgaii is for two objectives; use tpe or random "
                         "with a single metric")
    if "out" in d.search:
        raise DsaraError(f"{where} [search]: out is set per trial (<artifact root>/<study>/"
                         "trial-<N>); remove it")
    _check_targets(d)
    if d.objective == "retrain":
        cfg = retrain_config(d, "architecture.json", "retrain")  # bad keys fail here
        try:
            cfg.resolved()  # bad types and values here
        except DsaraError as e:
            raise DsaraError(f"{where} [objective.retrain]: {e}") from None
    return d


def parse_param(name: str, table: Any, where: str) -> Param:
    f = Fields(table, where)
    kind = f.get("type", str, check=lambda v: v in PARAM_TYPES,
                 hint=f"type is one of {', '.join(PARAM_TYPES)}")
    if kind == "categorical":
        choices = f.get("choices", list)
        f.finish()
        if not choices:
            raise DsaraError(f"{where}: choices is empty; list at least one value")
        return Param(name, kind, choices=tuple(choices))
    num = float if kind == "float" else int
    low, high = f.get("low", num), f.get("high", num)
    step = f.get("step", num, None, check=lambda v: v > 0, hint="step must be > 0")
    log = f.get("log", bool, False)
    f.finish()
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise DsaraError(f"{where}: the range is empty (low = {low}, high = {high}); "
                         "need low < high")
    if log and (low <= 0 or step is not None):
        raise DsaraError(f"{where}: log = true needs low > 0 and no step")
    return Param(name, kind, low, high, step, log)


def _check_targets(d: StudyDefinition) -> None:
    """Build the search config and load the space for each sample value of every parameter."""
    try:
        base = d.search_config({}, "probe")
    except DsaraError as e:
        raise DsaraError(f"{d.source} [search]: {e}") from None
    load_space(base.space, base.space_overrides)
    for name, p in d.params.items():
        if p.is_retrain:
            _check_retrain_param(d, name, p)
            continue
        for value in p.samples():
            try:
                cfg = d.search_config({name: value}, "probe")
                if not p.is_config or name.startswith("space_overrides."):
                    load_space(cfg.space, cfg.space_overrides)
            except DsaraError as e:
                raise DsaraError(f"{d.source} [params.{json.dumps(name)}]: {name} = {value!r} "
                                 f"is not a valid search-config field or search-space key "
                                 f"({e})") from None


def _check_retrain_param(d: StudyDefinition, name: str, p: Param) -> None:
    """A retrain.FIELD parameter needs the retrain objective, and each sample value must make a
    valid retrain config (``retrain.method`` = an unknown method fails here, listing them)."""
    if d.objective != "retrain":
        raise DsaraError(f"{d.source} [params.{json.dumps(name)}]: a retrain.* parameter needs "
                         "[objective] kind = \"retrain\"")
    for value in p.samples():
        try:
            retrain_config(d, "architecture.json", "retrain", {name: value}).resolved()
        except DsaraError as e:
            raise DsaraError(f"{d.source} [params.{json.dumps(name)}]: {name} = {value!r}: {e}"
                             ) from None


def retrain_config(d: StudyDefinition, arch: str | Path, out: str | Path,
                   values: dict[str, Any] | None = None):
    """The TrainConfig of a trial's short retrain: [objective.retrain] over the search's data,
    with the trial's retrain.* values (e.g. ``retrain.method``) on top."""
    from ..train.config import config_from_dict

    base = {k: d.search[k] for k in ("dataset", "data_root", "synthetic", "seed")
            if k in d.search}
    base["device"] = d.search.get("device", "auto")
    swept = {k[len(RETRAIN_PREFIX):]: v for k, v in (values or {}).items()
             if k.startswith(RETRAIN_PREFIX)}
    raw = apply_overrides({**base, **d.retrain}, swept, where=f"{d.source} [params]")
    raw = {**raw, "arch": str(arch), "out": str(out)}
    try:
        cfg = config_from_dict(raw, f"{d.source} [objective.retrain]")
        if cfg.synthetic == {}:
            cfg.synthetic = None
        return cfg
    except TypeError as e:
        raise DsaraError(f"{d.source} [objective.retrain]: {e}") from None
