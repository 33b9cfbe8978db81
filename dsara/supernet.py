"""The supernet searched by DSARA: every op on every edge, mixed by softmax(alpha).

Each cell type has its own architecture parameter alpha of shape (edges, ops), held as a real
`nn.Parameter` in ``self.alphas`` so that it is in the state dict and checkpoints; it is kept apart
from the weights by `arch_parameters()` / `weight_parameters()` (separate optimizers), not hidden.
"""

from __future__ import annotations

import torch
from torch import nn

from .genotype import Genotype, derive, n_edges
from .network import Normalize, preprocess, stem
from .ops import POOLS, make_op
from .space import Macro, SearchSpace


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class MixedOp(nn.Module):
    """sum_k w_k * op_k(x). With partial_k > 1 only C/K channels go through the ops (PC-DARTS);
    the rest bypass them (max-pooled at stride 2) and the channels are shuffled back together."""

    def __init__(self, C: int, stride: int, ops: list[str], partial_k: int = 1):
        super().__init__()
        self.k, self.stride = partial_k, stride
        C_op = C // partial_k
        self.ops = nn.ModuleList(
            nn.Sequential(make_op(name, C_op, stride, affine=False),
                          nn.BatchNorm2d(C_op, affine=False)) if name in POOLS
            else make_op(name, C_op, stride, affine=False)
            for name in ops)
        self.bypass = nn.MaxPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x, weights):  # x (B, C, H, W), weights (ops,)
        if self.k == 1:
            return sum(w * op(x) for w, op in zip(weights, self.ops))
        C_op = x.shape[1] // self.k
        xa, xb = x[:, :C_op], x[:, C_op:]
        out = sum(w * op(xa) for w, op in zip(weights, self.ops))
        return channel_shuffle(torch.cat([out, self.bypass(xb)], dim=1), self.k)


class SearchCell(nn.Module):
    def __init__(self, nodes: int, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, ops: list[str], partial_k: int = 1):
        super().__init__()
        self.nodes = nodes
        self.pre0, self.pre1 = preprocess(C_pp, C_p, C, reduction_prev, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(C, 2 if reduction and src < 2 else 1, ops, partial_k)
            for node in range(nodes) for src in range(node + 2))

    def forward(self, s0, s1, weights):  # weights (edges, ops)
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for _ in range(self.nodes):
            states.append(sum(self.edges[offset + j](h, weights[offset + j])
                              for j, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[2:], dim=1)


class Supernet(nn.Module):
    def __init__(self, macro: Macro, ops: list[str], partial_k: int = 1,
                 alpha_init_std: float = 1e-3):
        super().__init__()
        if partial_k < 1:
            raise ValueError(f"partial_k must be >= 1, got {partial_k}")
        self.macro, self.ops = macro, list(ops)
        self.normalize = Normalize(macro.mean, macro.std)
        C_stem = macro.stem_multiplier * macro.C
        self.stem = stem(len(macro.mean), C_stem)
        C_pp, C_p, reduction_prev = C_stem, C_stem, False
        self.cells = nn.ModuleList()
        self.cell_types: list[str] = []
        for spec in macro.cell_plan():
            self.cells.append(SearchCell(macro.nodes, C_pp, C_p, spec.C, spec.reduction,
                                         reduction_prev, self.ops, partial_k))
            self.cell_types.append(spec.cell_type)
            C_pp, C_p, reduction_prev = C_p, macro.nodes * spec.C, spec.reduction
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, macro.num_classes)
        shape = (n_edges(macro.nodes), len(self.ops))
        # alpha ~ 1e-3 * N(0, 1) (reference code); one tensor per cell type.
        self.alphas = nn.ParameterDict({
            t: nn.Parameter(alpha_init_std * torch.randn(shape)) for t in macro.cell_types()})

    def forward(self, x):
        weights = {t: torch.softmax(a.float(), dim=-1) for t, a in self.alphas.items()}
        s0 = s1 = self.stem(self.normalize(x))
        for cell, t in zip(self.cells, self.cell_types):
            s0, s1 = s1, cell(s0, s1, weights[t].to(s1.dtype))
        return self.classifier(self.pool(s1).flatten(1))

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def genotype(self) -> Genotype:
        return derive(dict(self.alphas.items()), self.ops, self.macro.nodes)


def build_supernet(space: SearchSpace, num_classes: int = 10, mean=None, std=None,
                   partial_k: int = 1, alpha_init_std: float = 1e-3) -> Supernet:
    """The supernet of `space` at its proxy size."""
    kw = {"num_classes": num_classes}
    if mean is not None:
        kw.update(mean=mean, std=std)
    return Supernet(space.proxy_macro(**kw), space.ops, partial_k, alpha_init_std)
