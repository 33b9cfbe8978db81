"""Compression after training: `COMPRESSORS`, one record per method (GDWS in `gdws`, Tucker-2
low rank in `lowrank`), run by `run.compress`; `throughput` measures original vs compressed. Adding
a method is one module with its ``apply`` and ``RECORD`` plus one line here."""

from __future__ import annotations

from . import gdws, lowrank
from .base import Compressor

COMPRESSORS: dict[str, Compressor] = {r.name: r for r in (gdws.RECORD, lowrank.RECORD)}

__all__ = ["COMPRESSORS", "Compressor"]
