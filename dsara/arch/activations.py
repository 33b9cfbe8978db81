"""Activations of the cell operations, keyed by name: ``relu``, ``swish``, ``sparta``.

Every DARTS op starts with an activation (ReLU -> conv -> BN); a search space or an architecture
file chooses it per cell type with the ``activation`` setting::

    activation = "sparta"                                   # every cell type
    activation = {accurate = "relu", robust = "sparta"}     # per cell type (others: relu)
    activation = ["relu", "swish", "sparta"]                # searched: alpha over activations
    [activation_options.sparta]                             # constants of an activation
    kernel = 3

A list (in a search space) makes the activation one more categorical choice of the search: the
supernet mixes the candidates by softmax(beta), one beta per cell type, and the derived architecture
keeps the argmax. A discrete network needs one name per cell type.

``sparta`` is a **reconstruction** (see `Sparta`), not the authors' published formula.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import DsaraError

Act = Callable[[int], nn.Module]  # channels -> activation module


@dataclass(frozen=True)
class SpartaConfig:
    """Constants of the Sparta reconstruction (all configurable through activation_options)."""

    kernel: int = 3  # spatial extent k of the per-channel gate conv (odd); 1 = no neighbours
    neighbour_init: float = 0.01  # initial weight of every off-centre tap; 0 = exactly Swish


class Sparta(nn.Module):
    """Spatially attentive activation, **reconstructed**: y = x * sigmoid(DWConv_k(x) + b).

    Sparta (Guo et al., arXiv 2105.08269) is described as a spatially attentive, input-dependent
    replacement of ReLU related to Swish; its formula was not available to us. This module is our
    reconstruction from that description: a learned per-channel k x k depthwise conv (with bias)
    computes the gate from the pixel and its neighbours. It starts close to Swish: the centre tap
    is 1, the bias 0 and every other tap `neighbour_init` (with 0 it *is* Swish at
    initialisation; a small non-zero value lets a pixel's neighbours move its gate from the start).
    """

    def __init__(self, C: int, kernel: int = SpartaConfig.kernel,
                 neighbour_init: float = SpartaConfig.neighbour_init):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise DsaraError(f"sparta kernel must be a positive odd number, got {kernel}")
        self.gate = nn.Conv2d(C, C, kernel, padding=kernel // 2, groups=C, bias=True)
        with torch.no_grad():
            self.gate.weight.fill_(float(neighbour_init))
            self.gate.weight[:, :, kernel // 2, kernel // 2] = 1.0
            self.gate.bias.zero_()

    def forward(self, x):  # x (B, C, H, W)
        return x * torch.sigmoid(self.gate(x))


def relu(C: int) -> nn.Module:
    return nn.ReLU(inplace=False)  # never in place: the op's input feeds other edges too


def _swish(C: int) -> nn.Module:
    return nn.SiLU()


# name -> (factory(C, **options), options dataclass or None)
ACTIVATIONS: dict[str, tuple[Callable[..., nn.Module], type | None]] = {
    "relu": (relu, None),
    "swish": (_swish, None),
    "sparta": (Sparta, SpartaConfig),
}
DEFAULT = "relu"


def check_activation(name: Any, where: str = "") -> str:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        at = f" in {where}" if where else ""
        raise DsaraError(f"unknown activation {name!r}{at}; known activations: "
                         f"{', '.join(ACTIVATIONS)}")
    return name


def check_options(options: Any, where: str) -> dict[str, dict[str, Any]]:
    """Validate ``activation_options``: {name: {field: value}} against each options dataclass."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise DsaraError(f"{where}: activation_options must be a table of tables, e.g. "
                         "[activation_options.sparta]")
    out = {}
    for name, table in options.items():
        kind = ACTIVATIONS[check_activation(name, f"{where} activation_options")][1]
        fields = {f.name: f.type for f in dataclasses.fields(kind)} if kind else {}
        if not isinstance(table, Mapping) or set(table) - set(fields):
            bad = sorted(set(table) - set(fields)) if isinstance(table, Mapping) else [table]
            raise DsaraError(f"{where}: activation_options.{name}: unknown option {bad[0]!r}; "
                             f"options of {name}: {', '.join(fields) or 'none'}")
        for key, value in table.items():
            ok = (isinstance(value, int) if fields[key] == "int" else
                  isinstance(value, (int, float))) and not isinstance(value, bool)
            if not ok:
                raise DsaraError(f"{where}: activation_options.{name}.{key} must be "
                                 f"{fields[key]}, got {value!r}")
        out[name] = dict(table)
    return out


def resolve(setting: Any, cell_types: Sequence[str], where: str = "activation"
            ) -> dict[str, tuple[str, ...]]:
    """Candidates per cell type of an ``activation`` setting (one name = fixed; several =
    searched). A string or list applies to every cell type; a table names cell types (the ones
    it leaves out get relu)."""
    if isinstance(setting, Mapping):
        unknown = sorted(set(setting) - set(cell_types))
        if unknown:
            raise DsaraError(f"{where}: activation names cell type {unknown[0]!r}, which this "
                             f"layout does not have; cell types: {', '.join(cell_types)}")
        return {t: _candidates(setting.get(t, DEFAULT), f"{where}.{t}") for t in cell_types}
    both = _candidates(setting, where)
    return {t: both for t in cell_types}


def _candidates(value: Any, where: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names:
        raise DsaraError(f"{where}: activation must be a name, a list of names or a table of "
                         f"them per cell type; known activations: {', '.join(ACTIVATIONS)}")
    if len(set(names)) != len(names):
        raise DsaraError(f"{where}: activation candidates {list(names)} repeat a name")
    return tuple(check_activation(n, where) for n in names)


def make_activation(name: str, C: int, options: Mapping[str, Mapping] | None = None
                    ) -> nn.Module:
    factory, _ = ACTIVATIONS[check_activation(name)]
    return factory(C, **dict((options or {}).get(name, {})))


def factory(name: str, options: Mapping[str, Mapping] | None = None) -> Act:
    """``C -> module`` for one activation, what the ops take."""
    return lambda C: make_activation(name, C, options)


class MixedActivation(nn.Module):
    """sum_k softmax(beta)_k * act_k(x): the searched activation of one cell type.

    `beta` belongs to the supernet (one per cell type, shared by every op of that type); it is
    held in a list so that it is not registered a second time in every op's state dict.
    """

    def __init__(self, C: int, names: Sequence[str], beta: nn.Parameter,
                 options: Mapping[str, Mapping] | None = None):
        super().__init__()
        self.names = list(names)
        self.acts = nn.ModuleList(make_activation(n, C, options) for n in names)
        self._beta = [beta]

    def forward(self, x):
        w = torch.softmax(self._beta[0].float(), dim=-1).to(x.dtype)
        return sum(wk * act(x) for wk, act in zip(w, self.acts))


def mixed_factory(names: Sequence[str], beta: nn.Parameter,
                  options: Mapping[str, Mapping] | None = None) -> Act:
    return lambda C: MixedActivation(C, names, beta, options)


def compact(per_type: Mapping[str, str]) -> str | dict[str, str]:
    """One name when every cell type has the same activation, else the table."""
    names = set(per_type.values())
    return names.pop() if len(names) == 1 else dict(per_type)
