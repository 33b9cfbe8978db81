"""Derive the cells of a search again from its saved alpha, without searching again.

The magnitude derivation (DARTS: per node the two strongest edges, each with its strongest op) is
a function of alpha (and, with partial channels, of the edge betas) alone, so a finished or
interrupted search can be derived again with other derivation options -- today P-DARTS' cap on
skip connections (`skip_cap`) -- from what its run directory holds:

- ``checkpoint.pt`` when present (alpha and edge betas of the last finished epoch), else
- the last line of ``alpha_history.jsonl`` (alpha only: enough unless the search used partial
  channels, whose edge betas only the checkpoint holds).

The macro layout (final size, derived activation) is the search's own ``architecture.json``'s.
`dsara arch derive` and an experiment source with ``reuse`` call this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..arch.archfile import Architecture, load_architecture
from ..arch.space import load_space
from ..arch.supernet import Supernet, build_supernet
from ..errors import DsaraError
from .config import SearchConfig, from_saved
from .rundir import RunDir


@dataclass(frozen=True)
class Rederived:
    architecture: Architecture   # the cells derived again, the search's macro layout
    searched: Architecture       # what the search itself derived (its architecture.json)
    epoch: int                   # the epoch whose alpha was used
    source: str                  # "checkpoint.pt" or "alpha_history.jsonl"
    config: SearchConfig

    def changed(self) -> list[str]:
        """The cell types whose derived cell differs from the search's own."""
        new, old = self.architecture.genotype.cells, self.searched.genotype.cells
        return [t for t in new if new[t] != old.get(t)]


def searched_supernet(run_dir: str | Path) -> tuple[Supernet, int, str, SearchConfig, Architecture]:
    """The supernet of the search in `run_dir` with its architecture parameters (alpha, edge betas)
    of the last finished epoch loaded; its weights only where the checkpoint is the source."""
    rd = RunDir(run_dir)
    if not rd.config.is_file():
        raise DsaraError(f"{rd.path} holds no search (no config.json); pass the folder a "
                         "`dsara search` wrote (for an experiment unit: <unit>/search)")
    if not rd.architecture.is_file():
        raise DsaraError(f"{rd.path} has no architecture.json yet (no epoch finished); derive it "
                         "once the search has finished an epoch")
    cfg = from_saved(rd.read_config(), str(rd.config))
    searched = load_architecture(rd.architecture)
    space = load_space(cfg.space, cfg.space_overrides)
    net = build_supernet(space, searched.macro.num_classes, partial_k=cfg.partial_k)
    if rd.checkpoint.is_file():
        state = rd.load_checkpoint()
        keys = {k for k in state["model"] if k.startswith(("alphas.", "edge_betas."))}
        net.load_state_dict({k: state["model"][k] for k in keys}, strict=False)
        return net, int(state["epoch"]), "checkpoint.pt", cfg, searched
    if cfg.partial_k > 1:
        raise DsaraError(f"{rd.path} has no checkpoint.pt: this search used partial channels "
                         f"(partial_k = {cfg.partial_k}), whose edge betas only the checkpoint "
                         "holds; derive it where its checkpoint is")
    last = _last_alphas(rd)
    own = net.state_dict()
    update = {}
    for t, values in last["alphas"].items():
        key = f"alphas.{t}"
        tensor = torch.tensor(values, dtype=own[key].dtype) if key in own else None
        if tensor is None or tensor.shape != own[key].shape:
            raise DsaraError(f"{rd.alphas}: alpha of cell type {t!r} does not fit the space "
                             f"{cfg.space!r} of config.json; the run directory is inconsistent")
        update[key] = tensor
    net.load_state_dict(update, strict=False)
    return net, int(last["epoch"]), "alpha_history.jsonl", cfg, searched


def rederive(run_dir: str | Path, skip_cap: int | None = None) -> Rederived:
    """The search in `run_dir` derived again by magnitude with `skip_cap` (None: no cap)."""
    if skip_cap is not None and skip_cap < 0:
        raise DsaraError(f"skip_cap must be >= 0, got {skip_cap}")
    net, epoch, source, cfg, searched = searched_supernet(run_dir)
    genotype = net.genotype(skip_cap)
    how = {"from": str(Path(run_dir)), "epoch": epoch, "alpha_from": source,
           "skip_cap": skip_cap}
    prov = {**searched.provenance, "rederived": how}
    arch = Architecture(genotype, searched.macro, prov, searched.name).validate()
    return Rederived(arch, searched, epoch, source, cfg)


def _last_alphas(rd: RunDir) -> dict[str, Any]:
    lines = [s for s in rd.alphas.read_text(encoding="utf-8").splitlines() if s.strip()] \
        if rd.alphas.is_file() else []
    for line in reversed(lines):  # a crash can leave a half-written last line: skip it
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "alphas" in record and "epoch" in record:
            return record
    raise DsaraError(f"{rd.path} has neither checkpoint.pt nor a readable alpha_history.jsonl; "
                     "nothing to derive from")
