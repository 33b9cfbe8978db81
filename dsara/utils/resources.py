"""Where the shipped definitions are found by name: search spaces, studies and experiments.

A checkout's top-level folders (``search_spaces/``, ``studies/``, ``experiments/``) come first, then
the copies installed inside the package (``dsara/_data/<kind>``, see pyproject.toml).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # dsara/


def data_dirs(kind: str) -> list[Path]:
    """A checkout's top-level folder first, then the copy installed inside the package."""
    dirs = [PACKAGE.parent / kind, PACKAGE / "_data" / kind]
    try:  # editable installs map the package data through an import finder
        dirs.append(Path(str(importlib.resources.files(f"dsara._data.{kind}"))))
    except (ImportError, TypeError, ValueError):
        pass
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def names(kind: str) -> list[str]:
    """The definitions of `kind` known by name (the stems of their .toml files)."""
    return sorted({p.stem for d in data_dirs(kind) for p in d.glob("*.toml")})


def looks_like_path(name_or_path: str | Path) -> bool:
    return Path(name_or_path).suffix == ".toml" or "/" in str(name_or_path)


def find(kind: str, name_or_path: str | Path) -> Path | None:
    """An existing file given by path, else the definition of `kind` with that name; None when
    there is neither (the caller says what it looked for)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if looks_like_path(name_or_path):
        return None
    for d in data_dirs(kind):
        if (d / f"{name_or_path}.toml").is_file():
            return d / f"{name_or_path}.toml"
    return None

