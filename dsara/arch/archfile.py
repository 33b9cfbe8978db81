"""The architecture file: a versioned JSON record of a searched (or published) architecture.

It holds the genotype of every cell type, the macro layout at the retraining size (stages, C, cells,
auxiliary head, input normalization on or off) and provenance (space, search config, dsara version). It is what a search writes, a
study exports, and `dsara train` / `dsara.build_model` read. Loading validates every field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import DsaraError
from ..utils.files import read_text, write_json_atomic
from .genotype import Genotype, get_published, parse_genotype, published_space
from .space import Macro, load_space

# 2: macro.normalize (input normalization on/off). A version-1 file has no such key and loads with
# normalize = true, the only behaviour dsara had when it was written, so it rebuilds the same network.
SCHEMA_VERSION = 2
KIND = "dsara.architecture"


@dataclass(frozen=True)
class Architecture:
    genotype: Genotype
    macro: Macro
    provenance: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def validate(self, where: str = "architecture") -> Architecture:
        for cell_type in self.macro.cell_types():
            cell = self.genotype[cell_type]
            if cell.nodes != self.macro.nodes:
                raise DsaraError(f"{where}: the {cell_type} cell has {cell.nodes} nodes but the "
                                 f"macro layout says nodes = {self.macro.nodes}")
        return self

    def resized(self, cells: int | None = None, channels: int | None = None) -> Architecture:
        return Architecture(self.genotype, self.macro.resized(cells, channels), self.provenance,
                            self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "genotype": self.genotype.to_dict(),
            "genotype_text": self.genotype.to_text(),
            "macro": self.macro.to_dict(),
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "architecture") -> Architecture:
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise DsaraError(f"{where} is not a dsara architecture file (no \"kind\": \"{KIND}\")")
        version = d.get("schema_version")
        if not isinstance(version, int) or version < 1:
            raise DsaraError(f"{where}: schema_version {version!r} is not a positive integer")
        if version > SCHEMA_VERSION:
            raise DsaraError(f"{where} has schema version {version}, newer than this dsara "
                             f"supports ({SCHEMA_VERSION}); upgrade dsara to read it")
        for key in ("genotype", "macro"):
            if key not in d:
                raise DsaraError(f"{where}: missing {key!r}")
        arch = cls(
            genotype=Genotype.from_dict(d["genotype"], f"{where} genotype"),
            macro=Macro.from_dict(d["macro"], f"{where} macro"),
            provenance=dict(d.get("provenance") or {}),
            name=str(d.get("name") or ""),
        )
        return arch.validate(where)


def provenance(**extra: Any) -> dict[str, Any]:
    from ..version import __version__

    return {"dsara_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"), **extra}


def save_architecture(arch: Architecture, path: str | Path) -> Path:
    """Write atomically (temp file + rename): a crash never leaves a half-written file."""
    return write_json_atomic(path, arch.to_dict())


def load_architecture(path: str | Path) -> Architecture:
    path = Path(path)
    text = read_text(path, "architecture file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DsaraError(f"architecture file {path} is not valid JSON ({e.msg} at line "
                         f"{e.lineno}); it may be truncated or corrupt") from None
    return Architecture.from_dict(data, f"architecture file {path}")


def builtin_architecture(name: str) -> Architecture:
    """A published cell at its paper's retraining size (DARTS 36 ch / 20 cells, ARNAS 64 / 20)."""
    genotype = get_published(name)
    space = load_space(published_space(genotype))
    return Architecture(genotype, space.final_macro(),
                        provenance(source="published", space=space.name), name=name.upper())


def from_genotype_text(text: str, space: str) -> Architecture:
    sp = load_space(space)
    return Architecture(parse_genotype(text), sp.final_macro(),
                        provenance(source="genotype text", space=sp.name)).validate()


def resolve_architecture(spec: str | Path | Architecture) -> Architecture:
    """An Architecture from an object, an architecture file path, or a built-in cell name."""
    if isinstance(spec, Architecture):
        return spec
    p = Path(spec)
    if p.suffix == ".json" or p.is_file() or os.sep in str(spec):
        return load_architecture(p)
    if str(spec).lstrip().startswith("Genotype("):
        raise DsaraError("genotype text needs a layout: use dsara.arch.archfile.from_genotype_text"
                         "(text, space)")
    return builtin_architecture(str(spec))
