"""What a training method is (`Method`: one record per method name) and how its free constants
are read from a config's ``method_options`` table (`typed_options`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import DsaraError


@dataclass(frozen=True)
class Method:
    """A training method and the attack defaults of its reference code. Its module holds its
    record(s) in ``RECORDS``; `dsara.train.methods.METHODS` collects them by name."""

    name: str
    fn: Callable[..., Any]  # (model, x, y, AdvParams, generator) -> (loss, terms)
    step_factor: float  # default inner step as a multiple of eps
    steps: int  # default inner steps
    craft_mode: str = "train"  # model mode while crafting (losses.crafting)
    start: str = "uniform"  # attack start (AdvParams.start)
    options: type | None = None  # frozen dataclass of its constants, if it has any
    # once per run, before the first epoch: the loader of its batches (labeled + extra images);
    # setup(cfg, model, fit, val, test, epochs_done, log)
    setup: Callable[..., Any] | None = None


def _typed(name: str, f: dataclasses.Field, value: Any) -> Any:
    kind = type(f.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if f.default is not None and not isinstance(value, kind) or (
            kind is not bool and isinstance(value, bool)):
        raise DsaraError(f"method option {name}.{f.name} must be {kind.__name__}, got {value!r}")
    return value


def typed_options(method: str, cls: type, raw: dict[str, Any] | None) -> Any:
    """`raw` as the typed, validated options dataclass `cls` of `method`."""
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise DsaraError(f"unknown method option {unknown[0]!r} for {method}; options: "
                         f"{', '.join(fields)}")
    opts = cls(**{k: _typed(method, fields[k], v) for k, v in raw.items()})
    opts.validate()
    return opts
