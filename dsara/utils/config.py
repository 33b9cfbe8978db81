"""Small helpers shared by every typed config: TOML loading, dotted overrides, field checks.

Configs are dataclasses built from TOML plus `--set key.path=value` overrides. Values of overrides are
parsed as TOML values (``1.5``, ``"sgd"``, ``[1, 2]``, ``true``), never evaluated as Python.
"""

from __future__ import annotations

import copy
import difflib
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import DsaraError
from .files import read_text


def read_toml(path: Path) -> dict:
    """Read a TOML file; a syntax error names the file and the position."""
    text = read_text(path, "TOML file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DsaraError(f"malformed TOML in {path}: {e}") from None


def parse_value(text: str) -> Any:
    """Parse an override value as a TOML value; bare words stay strings (``--set opt=adam``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def split_override(item: str) -> tuple[str, Any]:
    """``"stages.2.width=1.5"`` -> ``("stages.2.width", 1.5)``."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise DsaraError(f"override {item!r} is not of the form key.path=value "
                         "(e.g. --set stages.2.width=1.5)")
    return key.strip(), parse_value(value.strip())


def normalize_overrides(overrides: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """Accept a mapping ``{"a.b": 1}`` or strings ``["a.b=1"]``; return a mapping."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    return dict(split_override(o) for o in overrides)


def apply_overrides(raw: dict, overrides: Mapping[str, Any] | Iterable[str] | None,
                    where: str = "config") -> dict:
    """Return a copy of `raw` with dotted-path overrides applied (list items by index)."""
    out = copy.deepcopy(raw)
    for key, value in normalize_overrides(overrides).items():
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            node = _step(node, part, ".".join(parts[: i + 1]), where, create=True)
        _assign(node, parts[-1], value, key, where)
    return out


def _step(node, part, path, where, create):
    if isinstance(node, list):
        idx = _index(node, part, path, where)
        return node[idx]
    if isinstance(node, dict):
        if part not in node:
            if not create:
                raise DsaraError(f"override key {path!r} not found in {where}")
            node[part] = {}
        return node[part]
    raise DsaraError(f"override key {path!r} goes inside a value that is not a table in {where}")


def _assign(node, part, value, key, where):
    if isinstance(node, list):
        node[_index(node, part, key, where)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise DsaraError(f"override key {key!r} goes inside a value that is not a table in {where}")


def _index(node: list, part: str, path: str, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise DsaraError(f"override key {path!r}: {part!r} is not an index of a list of "
                         f"{len(node)} items in {where}")
    return int(part)


class Fields:
    """Typed reads from one TOML table that name the file and key when something is off."""

    def __init__(self, table: Mapping, where: str):
        if not isinstance(table, Mapping):
            raise DsaraError(f"{where} must be a table, got {type(table).__name__}")
        self.table, self.where, self.used = table, where, set()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *,
            check=None, hint: str = "") -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                raise DsaraError(f"{self.where}: missing key {key!r}")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise DsaraError(f"{self.where}: {key} must be {names}, got {value!r}")
        if check is not None and not check(value):
            raise DsaraError(f"{self.where}: {key} = {value!r} is invalid; {hint}")
        return value

    def finish(self) -> None:
        """Reject keys nobody read: a typo must not pass silently."""
        extra = sorted(set(self.table) - self.used)
        if extra:
            raise DsaraError(f"{self.where}: unknown key {extra[0]!r}{did_you_mean(extra[0], self.used)}"
                             f"; known keys: {', '.join(sorted(self.used))}")


def did_you_mean(key: str, known) -> str:
    """``; did you mean 'lam'?`` for the closest known key, or nothing."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
