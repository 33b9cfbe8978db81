"""The supernet searched by DSARA: every op on every edge, mixed by softmax(alpha).

Each cell type has its own architecture parameter alpha of shape (edges, ops), held as a real
`nn.Parameter` in ``self.alphas`` so that it is in the state dict and checkpoints; it is kept apart
from the weights by `arch_parameters()` / `weight_parameters()` (separate optimizers), not hidden.

With partial channels (``partial_k`` K > 1) the supernet is PC-DARTS (Xu et al., ICLR 2020): 1/K of
each edge's channels go through the ops, and each cell type also has edge-normalization weights
beta (``self.edge_betas``, one per edge, 1e-3 * N(0, 1) as their code): a node sums its incoming
mixed ops weighted by softmax(beta) over those edges, and derivation ranks edges by
softmax(alpha) * softmax(beta), as their `genotype()` does.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import DsaraError
from .activations import Act, compact, factory, mixed_factory, relu
from .genotype import Genotype, derive, n_edges
from .network import input_normalization, preprocess, stem
from .ops import POOLS, make_op
from .space import Macro, SearchSpace


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class MixedOp(nn.Module):
    """sum_k w_k * op_k(x). With partial_k > 1 only C/K channels go through the ops (PC-DARTS);
    the rest bypass them (max-pooled at stride 2) and the channels are shuffled back together."""

    def __init__(self, C: int, stride: int, ops: list[str], partial_k: int = 1, act: Act = relu):
        super().__init__()
        self.k, self.stride = partial_k, stride
        C_op = C // partial_k
        self.ops = nn.ModuleList(
            nn.Sequential(make_op(name, C_op, stride, affine=False),
                          nn.BatchNorm2d(C_op, affine=False)) if name in POOLS
            else make_op(name, C_op, stride, affine=False, act=act)
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
                 reduction_prev: bool, ops: list[str], partial_k: int = 1, act: Act = relu):
        super().__init__()
        self.nodes = nodes
        self.pre0, self.pre1 = preprocess(C_pp, C_p, C, reduction_prev, affine=False, act=act)
        self.edges = nn.ModuleList(
            MixedOp(C, 2 if reduction and src < 2 else 1, ops, partial_k, act)
            for node in range(nodes) for src in range(node + 2))

    def forward(self, s0, s1, weights, edge_weights=None):  # (edges, ops), (edges,) or None
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for _ in range(self.nodes):
            outs = [self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states)]
            if edge_weights is not None:  # PC-DARTS edge normalization
                outs = [edge_weights[offset + j] * o for j, o in enumerate(outs)]
            states.append(sum(outs))
            offset += len(states) - 1
        return torch.cat(states[2:], dim=1)


def edge_softmax(beta: torch.Tensor, nodes: int) -> torch.Tensor:
    """softmax(beta) over each node's incoming edges, concatenated: (edges,) -> (edges,)."""
    parts, start = [], 0
    for node in range(nodes):
        parts.append(torch.softmax(beta[start: start + node + 2], dim=-1))
        start += node + 2
    return torch.cat(parts)


def check_partial_k(macro: Macro, k: int) -> None:
    """Partial channels split every cell's C channels into K groups: each must divide by K."""
    if k < 1:
        raise DsaraError(f"partial_k must be >= 1, got {k}")
    for i, stage in enumerate(macro.stages):
        C = macro.stage_channels(stage)
        if C % k:
            raise DsaraError(f"partial_k = {k} needs C and every stage's channels to divide by "
                             f"{k}, but stage {i} has {C} (width {stage.width:g} x C = "
                             f"{macro.C}); choose a K that divides them or another C")


class Supernet(nn.Module):
    def __init__(self, macro: Macro, ops: list[str], partial_k: int = 1,
                 alpha_init_std: float = 1e-3):
        super().__init__()
        check_partial_k(macro, partial_k)
        self.macro, self.ops = macro, list(ops)
        acts = self._activations(macro, alpha_init_std)
        self.normalize = input_normalization(macro)
        C_stem = macro.stem_multiplier * macro.C
        self.stem = stem(len(macro.mean), C_stem)
        C_pp, C_p, reduction_prev = C_stem, C_stem, False
        self.cells = nn.ModuleList()
        self.cell_types: list[str] = []
        for spec in macro.cell_plan():
            self.cells.append(SearchCell(macro.nodes, C_pp, C_p, spec.C, spec.reduction,
                                         reduction_prev, self.ops, partial_k,
                                         acts[spec.cell_type]))
            self.cell_types.append(spec.cell_type)
            C_pp, C_p, reduction_prev = C_p, macro.nodes * spec.C, spec.reduction
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, macro.num_classes)
        shape = (n_edges(macro.nodes), len(self.ops))
        # alpha ~ 1e-3 * N(0, 1) (reference code); one tensor per cell type.
        self.alphas = nn.ParameterDict({
            t: nn.Parameter(alpha_init_std * torch.randn(shape)) for t in macro.cell_types()})
        # PC-DARTS edge normalization: only with partial channels, as PC-DARTS pairs them
        self.edge_betas = nn.ParameterDict({
            t: nn.Parameter(alpha_init_std * torch.randn(shape[0])) for t in macro.cell_types()
        } if partial_k > 1 else {})

    def _activations(self, macro: Macro, init_std: float) -> dict[str, Act]:
        """One activation per cell type; a cell type with several candidates gets a searched
        mixture and its own architecture parameter (beta, in ``activation_alphas``)."""
        self.activation_names = macro.activations()
        self.activation_alphas = nn.ParameterDict({
            t: nn.Parameter(init_std * torch.randn(len(names)))
            for t, names in self.activation_names.items() if len(names) > 1})
        return {t: mixed_factory(names, self.activation_alphas[t], macro.activation_options)
                if len(names) > 1 else factory(names[0], macro.activation_options)
                for t, names in self.activation_names.items()}

    def derived_activation(self) -> dict[str, str]:
        """The activation of every cell type: the fixed one, or the searched argmax."""
        return {t: names[int(self.activation_alphas[t].argmax())] if len(names) > 1
                else names[0] for t, names in self.activation_names.items()}

    def derived_macro(self, macro: Macro) -> Macro:
        """`macro` (e.g. the final size) with the derived activation in place of the candidates."""
        return dataclasses.replace(macro, activation=compact(self.derived_activation()))

    def forward(self, x, weights: dict[str, torch.Tensor] | None = None):
        """Logits; `weights` (per cell type, (edges, ops)) replaces softmax(alpha) where given
        (perturbation-based selection masks and discretizes edges through it)."""
        weights = weights or {t: torch.softmax(a.float(), dim=-1) for t, a in self.alphas.items()}
        edges = self.edge_weights()
        s0 = s1 = self.stem(self.normalize(x))
        for cell, t in zip(self.cells, self.cell_types):
            e = edges[t].to(s1.dtype) if t in edges else None
            s0, s1 = s1, cell(s0, s1, weights[t].to(s1.dtype), e)
        return self.classifier(self.pool(s1).flatten(1))

    def edge_weights(self) -> dict[str, torch.Tensor]:
        """softmax(beta) per node's incoming edges, per cell type; empty without partial channels."""
        return {t: edge_softmax(b.float(), self.macro.nodes) for t, b in self.edge_betas.items()}

    def arch_parameters(self) -> list[nn.Parameter]:
        return (list(self.alphas.values()) + list(self.activation_alphas.values())
                + list(self.edge_betas.values()))

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def genotype(self, skip_cap: int | None = None) -> Genotype:
        """The derived cells; `skip_cap`: P-DARTS' cap on skip connections in the normal (non-
        reduction) cell types (genotype.derive)."""
        edges = {t: w.detach() for t, w in self.edge_weights().items()}
        normal = tuple(t for t in self.alphas if t != self.macro.reduce_cell_type)
        return derive(dict(self.alphas.items()), self.ops, self.macro.nodes, edges or None,
                      skip_cap, normal)


def build_supernet(space: SearchSpace, num_classes: int = 10, mean=None, std=None,
                   partial_k: int = 1, alpha_init_std: float = 1e-3) -> Supernet:
    """The supernet of `space` at its proxy size."""
    kw = {"num_classes": num_classes}
    if mean is not None:
        kw.update(mean=mean, std=std)
    return Supernet(space.proxy_macro(**kw), space.ops, partial_k, alpha_init_std)
