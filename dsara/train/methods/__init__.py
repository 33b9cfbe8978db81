"""Every training method, by name: `METHODS`, collected from one `Method` record per name held
next to its code (PGD-AT, TRADES, MART, FGSM-RS in `standard`; the seed papers' methods in their
own modules, SEEDS.md). Adding a method is one module with its ``RECORDS`` plus its name in
`_MODULES`.

A record carries the method's function, its attack defaults, the frozen dataclass of its free
constants (filled from the train config's ``method_options`` table, ``--set
method_options.alpha=0.5``, validated up front and written in full into config.json), and, for
methods that need more than a batch (an unlabeled pool and a teacher, an offline generated set), a
`setup` that runs once per run, before the first epoch, and returns the loader the loop iterates.

Reconstructions (mart-ss pseudo-labelling, BANG's scaling, J-SIGR's penalties, the Krylov
direction, LADDER's details) say so in their docstrings; none is presented as the authors' code.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...data.loader import Loader
from ...errors import DsaraError
from . import bang, iat, jsigr, ladder, mart_ss, so_at, standard
from .base import Method, typed_options
from .extra import loader_options

_MODULES = (standard, iat, mart_ss, bang, jsigr, ladder, so_at)  # the order of METHODS
METHODS: dict[str, Method] = {r.name: r for module in _MODULES for r in module.RECORDS}
OPTIONS: dict[str, type] = {n: r.options for n, r in METHODS.items() if r.options is not None}
SETUPS = {n: r.setup for n, r in METHODS.items() if r.setup is not None}


def get_method(name: str) -> Method:
    """The registered method `name`."""
    if name not in METHODS:
        raise DsaraError(f"unknown training method {name!r}; methods: {', '.join(METHODS)}")
    return METHODS[name]


def method_options(method: str, raw: dict[str, Any] | None) -> Any:
    """The typed, validated options of `method` (None for a method without options)."""
    cls = OPTIONS.get(method)
    if cls is None:
        if raw:
            raise DsaraError(f"method {method!r} takes no method_options (got "
                             f"{', '.join(sorted(raw))}); methods with options: "
                             f"{', '.join(OPTIONS)}")
        return None
    return typed_options(method, cls, raw)


def resolve_options(method: str, raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """`raw` with every default filled in, as config.json records it (None without options)."""
    opts = method_options(method, raw)
    return None if opts is None else dataclasses.asdict(opts)


def prepare_loader(cfg, model, fit, val, test, epochs_done: int, log):
    """The loader of a run's training batches: the plain one, or its method's (`setup`)."""
    setup = SETUPS.get(cfg.method)
    if setup is not None:
        return setup(cfg, model, fit, val, test, epochs_done, log)
    if cfg.unlabeled or cfg.teacher:
        raise DsaraError(f"--unlabeled and --teacher are for mart-ss (both) and ladder "
                         f"(--teacher), not for {cfg.method}")
    return Loader(fit, cfg.batch_size, seed=cfg.seed, **loader_options(cfg))


__all__ = ["METHODS", "OPTIONS", "SETUPS", "Method", "get_method", "method_options",
           "prepare_loader", "resolve_options"]
