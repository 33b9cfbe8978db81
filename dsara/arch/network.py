"""Discrete networks built from an architecture at any size: stem, cells, auxiliary head, classifier.

Inputs are images in [0, 1], and attacks work in that pixel space: a layout with ``normalize`` on
(the DARTS space) standardizes them as the model's first step, one with it off (the DSARA space, as
its authors' code) feeds the raw pixels to the stem. ``model(x)`` returns logits; ``model(x, return_aux=True)`` returns ``(logits, aux_logits)``,
where ``aux_logits`` is None unless the model is training and has an auxiliary head.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DsaraError
from .activations import Act, relu
from .genotype import CellGenotype
from .ops import FactorizedReduce, Identity, ReLUConvBN, make_op
from .space import Macro


class Normalize(nn.Module):
    """(x - mean) / std per channel; inputs stay in [0, 1] outside the model."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def input_normalization(macro: Macro) -> nn.Module:
    """The model's first step: (x - mean) / std where the layout asks for it, else nothing."""
    return Normalize(macro.mean, macro.std) if macro.normalize else nn.Identity()


def stem(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels))


def preprocess(C_pp: int, C_p: int, C: int, reduction_prev: bool, affine: bool,
               act: Act = relu):
    """Bring the two cell inputs to C channels at the same resolution (DARTS)."""
    pre0 = (FactorizedReduce(C_pp, C, affine, act) if reduction_prev
            else ReLUConvBN(C_pp, C, 1, 1, 0, affine, act))
    return pre0, ReLUConvBN(C_p, C, 1, 1, 0, affine, act)


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of a branch with probability drop_prob, rescaling the kept ones."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    def __init__(self, genotype: CellGenotype, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, act: Act = relu):
        super().__init__()
        self.reduction = reduction
        self.pre0, self.pre1 = preprocess(C_pp, C_p, C, reduction_prev, affine=True, act=act)
        self.ops = nn.ModuleList(
            make_op(op, C, 2 if reduction and src < 2 else 1, affine=True, act=act)
            for op, src in genotype.edges)
        self.inputs = [src for _, src in genotype.edges]
        self.concat = list(genotype.concat)
        self.multiplier = len(self.concat)

    def forward(self, s0, s1, drop_prob: float = 0.0):
        states = [self.pre0(s0), self.pre1(s1)]
        for k in range(0, len(self.ops), 2):
            node = 0
            for op, src in ((self.ops[k], self.inputs[k]), (self.ops[k + 1], self.inputs[k + 1])):
                h = op(states[src])
                if self.training and drop_prob > 0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS' CIFAR auxiliary classifier: on its 8x8 input the DARTS pool (5x5, stride 3) gives
    2x2; other input sizes (other image sizes) use an adaptive 2x2 pool instead."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)  # its input feeds the next cells too
        self.darts_pool = nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False)
        self.adaptive_pool = nn.AdaptiveAvgPool2d(2)
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.relu(x)
        x = self.darts_pool(x) if x.shape[-2:] == (8, 8) else self.adaptive_pool(x)
        return self.classifier(self.features(x).flatten(1))


def auxiliary_index(plan: list) -> int:
    """The cell whose output feeds the auxiliary head: the last reduction cell, as in DARTS (whose
    2L//3 is its second reduction; 8x8 on CIFAR). A layout without reductions uses 2L//3."""
    reductions = [i for i, spec in enumerate(plan) if spec.reduction]
    return reductions[-1] if reductions else 2 * len(plan) // 3


def activation_factories(macro: Macro) -> dict[str, Act]:
    """The one activation of every cell type of a discrete network."""
    from .activations import factory

    out = {}
    for cell_type, names in macro.activations().items():
        if len(names) != 1:
            raise DsaraError(f"the {cell_type} cells have activation candidates {list(names)}; "
                             "a discrete network needs one activation per cell type (a search "
                             "chooses it; set activation to one name)")
        out[cell_type] = factory(names[0], macro.activation_options)
    return out


class Network(nn.Module):
    """A discrete network: `Macro` layout + `Genotype` cells."""

    has_auxiliary: bool

    def __init__(self, genotype, macro: Macro):
        super().__init__()
        self.macro = macro
        self.drop_path_prob = 0.0  # set by the trainer every epoch (ramped up to macro.drop_path)
        self.normalize = input_normalization(macro)
        C_stem = macro.stem_multiplier * macro.C
        self.stem = stem(len(macro.mean), C_stem)
        C_pp, C_p, reduction_prev = C_stem, C_stem, False
        plan = macro.cell_plan()
        self.aux_index = auxiliary_index(plan) if macro.auxiliary_weight > 0 else -1
        self.cells = nn.ModuleList()
        self.auxiliary_head = None
        acts = activation_factories(macro)
        for i, spec in enumerate(plan):
            cell = Cell(genotype[spec.cell_type], C_pp, C_p, spec.C, spec.reduction,
                        reduction_prev, acts[spec.cell_type])
            self.cells.append(cell)
            C_pp, C_p, reduction_prev = C_p, cell.multiplier * spec.C, spec.reduction
            if i == self.aux_index:
                self.auxiliary_head = AuxiliaryHead(C_p, macro.num_classes)
        self.has_auxiliary = self.auxiliary_head is not None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, macro.num_classes)

    def forward(self, x, return_aux: bool = False):
        s0 = s1 = self.stem(self.normalize(x))
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.training and return_aux:  # attacks never need it
                aux = self.auxiliary_head(s1)
        logits = self.classifier(self.pool(s1).flatten(1))
        return (logits, aux) if return_aux else logits
