"""The run directory of a search and its files, written so that a crash never corrupts them.

    config.json          the resolved SearchConfig (re-read by --resume)
    metrics.jsonl        one record per completed epoch
    alpha_history.jsonl  raw alpha per cell type, epoch 0 (initial) and after every epoch
    architecture.json    the genotype derived so far (the final one at the end)
    checkpoint.pt        everything needed to continue exactly; loads with weights_only=True

Per epoch the logs are appended first and the checkpoint replaced last; on resume, log lines
beyond the checkpoint's epoch are dropped, so logs and checkpoint always agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import DsaraError
from ..utils.files import append_line, atomic_write, read_text, write_json_atomic, write_text_atomic


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.alphas = self.path / "alpha_history.jsonl"
        self.architecture = self.path / "architecture.json"
        self.checkpoint = self.path / "checkpoint.pt"

    def has_search(self) -> bool:
        return self.checkpoint.exists() or self.config.exists()

    def write_config(self, config: dict[str, Any]) -> None:
        write_json_atomic(self.config, config)

    def read_config(self) -> dict[str, Any]:
        if not self.config.exists():
            raise DsaraError(f"{self.path} holds no search (no config.json); check the path "
                             "given to --resume")
        try:
            return json.loads(read_text(self.config, "search config"))
        except json.JSONDecodeError:
            raise DsaraError(f"{self.config} is corrupt; the run cannot be resumed") from None

    def append(self, record: dict[str, Any], alphas: dict[str, list]) -> None:
        _append_line(self.metrics, record)
        _append_line(self.alphas, {"epoch": record["epoch"], "alphas": alphas})

    def start_alpha_history(self, alphas: dict[str, list]) -> None:
        self.alphas.unlink(missing_ok=True)
        self.metrics.unlink(missing_ok=True)
        _append_line(self.alphas, {"epoch": 0, "alphas": alphas})

    def read_metrics(self) -> list[dict[str, Any]]:
        return _read_lines(self.metrics)

    def truncate(self, epoch: int) -> None:
        """Keep only log lines of epochs <= `epoch` (lines after the checkpoint are redone)."""
        for path in (self.metrics, self.alphas):
            keep = [r for r in _read_lines(path) if r["epoch"] <= epoch]
            write_jsonl_atomic(path, keep)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write(self.checkpoint, lambda fh: torch.save(state, fh))

    def load_checkpoint(self, map_location="cpu") -> dict[str, Any]:
        if not self.checkpoint.exists():
            raise DsaraError(f"{self.path} has no checkpoint.pt yet (no epoch finished); start "
                             "the search again without --resume")
        try:
            return torch.load(self.checkpoint, map_location=map_location, weights_only=True)
        except Exception as e:  # a truncated or foreign file: say so in one line
            raise DsaraError(f"{self.checkpoint} cannot be read ({type(e).__name__}); it is "
                             "corrupt or not a dsara search checkpoint") from None


def _append_line(path: Path, obj: dict[str, Any]) -> None:
    append_line(path, json.dumps(obj))


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in read_text(path, "run log").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: it will be rewritten
            break
    return out


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
