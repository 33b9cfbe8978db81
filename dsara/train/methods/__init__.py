"""The seed papers' training methods beyond PGD-AT, TRADES, MART and FGSM-RS (SEEDS.md).

Each module holds one method family; `dsara.train.losses.METHODS` registers them by name. A
method's free constants live in a frozen dataclass (`OPTIONS[name]`), filled from the train
config's ``method_options`` table (``--set method_options.alpha=0.5``), validated up front and
written in full into config.json. Methods that need more than a batch (an unlabeled pool and a
teacher, an offline generated set) also register a `SETUPS` entry: once per run, before the first
epoch, it returns the loader the loop iterates (labeled + extra images per batch).

Reconstructions (mart-ss pseudo-labelling, BANG's scaling, J-SIGR's penalties, the Krylov
direction, LADDER's details) say so in their docstrings; none is presented as the authors' code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ...data import Loader
from ...errors import DsaraError
from . import ladder, mart_ss, so_at
from .bang import BANGOptions
from .extra import loader_options
from .iat import IATOptions
from .jsigr import JSIGROptions

OPTIONS: dict[str, type] = {
    "iat": IATOptions,
    "iat-manifold": IATOptions,
    "mart-ss": mart_ss.MartSSOptions,
    "bang": BANGOptions,
    "jsigr": JSIGROptions,
    "so-at": so_at.SOATOptions,
    "ladder": ladder.LadderOptions,
}

# name -> setup(cfg, model, fit, val, test, epochs_done, log) -> the loader of the run's batches
SETUPS: dict[str, Callable[..., Any]] = {
    "mart-ss": mart_ss.setup,
    "ladder": ladder.setup,
}


def _typed(name: str, f: dataclasses.Field, value: Any) -> Any:
    kind = type(f.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if f.default is not None and not isinstance(value, kind) or (
            kind is not bool and isinstance(value, bool)):
        raise DsaraError(f"method option {name}.{f.name} must be {kind.__name__}, got {value!r}")
    return value


def method_options(method: str, raw: dict[str, Any] | None) -> Any:
    """The typed, validated options of `method` (None for a method without options)."""
    raw = dict(raw or {})
    cls = OPTIONS.get(method)
    if cls is None:
        if raw:
            raise DsaraError(f"method {method!r} takes no method_options (got "
                             f"{', '.join(sorted(raw))}); methods with options: "
                             f"{', '.join(OPTIONS)}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise DsaraError(f"unknown method option {unknown[0]!r} for {method}; options: "
                         f"{', '.join(fields)}")
    opts = cls(**{k: _typed(method, fields[k], v) for k, v in raw.items()})
    opts.validate()
    return opts


def resolve_options(method: str, raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """`raw` with every default filled in, as config.json records it (None without options)."""
    opts = method_options(method, raw)
    return None if opts is None else dataclasses.asdict(opts)


def prepare_loader(cfg, model, fit, val, test, epochs_done: int, log):
    """The loader of a run's training batches: the plain one, or its method's (SETUPS)."""
    setup = SETUPS.get(cfg.method)
    if setup is not None:
        return setup(cfg, model, fit, val, test, epochs_done, log)
    if cfg.unlabeled or cfg.teacher:
        raise DsaraError(f"--unlabeled and --teacher are for mart-ss (both) and ladder "
                         f"(--teacher), not for {cfg.method}")
    return Loader(fit, cfg.batch_size, seed=cfg.seed, **loader_options(cfg))


__all__ = ["OPTIONS", "SETUPS", "method_options", "prepare_loader", "resolve_options"]
