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
