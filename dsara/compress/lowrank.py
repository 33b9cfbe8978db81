"""Low-rank compression, CSTAR-style: Tucker-2 per conv, ranks chosen globally for a budget.

**A reconstruction.** CSTAR (Phan et al., AAAI 2023) combines low-rank compactness, structure and
robustness with ranks determined globally; its code was not available. What dsara does:

- every eligible conv W (M x C x K x K; see `layers.eligible_convs`) is factorised by a truncated
  HOSVD of its two channel modes: U_out (M x r_out) and U_in (C x r_in) are the leading left
  singular vectors of the output and input unfoldings, the core is W x_1 U_out^T x_2 U_in^T, and
  the conv becomes 1x1 C -> r_in, KxK r_in -> r_out (the core), 1x1 r_out -> M (`Tucker2Conv`);
- the ranks of all convs are chosen together (`choose_ranks`): starting from full rank, the step
  that removes one rank where it costs the least relative squared error (the discarded singular
  energy of that mode over ||W||^2, the HOSVD error bound) per parameter or multiply-add saved is
  taken until the network meets the budget;
- a conv whose factorisation would not be smaller than the conv stays a standard conv;
- then a short robust fine-tune (PGD) with a named recipe, run by `dsara compress`.
"""

from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass

import torch
from torch import nn

from ..arch.compressed import Tucker2Conv, eligible_convs, set_module
from ..errors import DsaraError
from .base import Compressor

BUDGET_KINDS = ("params", "macs")


@dataclass
class LowRankConfig:
    budget: float = 0.5  # the compressed network keeps this fraction of its params (or MACs)
    budget_kind: str = "params"  # params | macs: what the budget counts (whole network)

    def resolved(self) -> LowRankConfig:
        if self.budget_kind not in BUDGET_KINDS:
            raise DsaraError(f"unknown low-rank budget kind {self.budget_kind!r}; known: "
                             f"{', '.join(BUDGET_KINDS)}")
        if not 0 < self.budget <= 1:
            raise DsaraError(f"low-rank budget must be a fraction in (0, 1], got {self.budget}")
        return self


@dataclass
class ConvFactors:
    """Truncated HOSVD factors of one conv at full rank; `factorise` truncates them."""

    U_out: torch.Tensor  # (M, M') leading left singular vectors of the output unfolding
    S_out: torch.Tensor  # (M',)
    U_in: torch.Tensor  # (C, C')
    S_in: torch.Tensor  # (C',)
    pixels_in: int  # input pixels of one image (the first 1x1 runs at the input resolution)
    pixels_out: int

    @classmethod
    def of(cls, conv: nn.Conv2d, pixels_in: int, pixels_out: int) -> ConvFactors:
        W = conv.weight.detach().double()
        M, C = W.shape[:2]
        U_out, S_out, _ = torch.linalg.svd(W.reshape(M, -1), full_matrices=False)
        U_in, S_in, _ = torch.linalg.svd(W.transpose(0, 1).reshape(C, -1), full_matrices=False)
        return cls(U_out, S_out, U_in, S_in, pixels_in, pixels_out)


def tucker2_params(conv: nn.Conv2d, r_in: int, r_out: int) -> int:
    """C r_in + r_in r_out K^2 + r_out M (+ M bias)."""
    K2 = conv.kernel_size[0] * conv.kernel_size[1]
    bias = conv.out_channels if conv.bias is not None else 0
    return conv.in_channels * r_in + r_in * r_out * K2 + r_out * conv.out_channels + bias


def tucker2_macs(conv: nn.Conv2d, r_in: int, r_out: int, pixels_in: int, pixels_out: int) -> int:
    """Multiply-adds of one image: the first 1x1 at the input resolution, the rest at the output."""
    K2 = conv.kernel_size[0] * conv.kernel_size[1]
    return (pixels_in * conv.in_channels * r_in
            + pixels_out * (r_in * r_out * K2 + r_out * conv.out_channels))


def conv_cost(conv: nn.Conv2d, pixels_out: int, kind: str) -> int:
    n = conv.weight.numel()
    if kind == "params":
        return n + (conv.out_channels if conv.bias is not None else 0)
    return n * pixels_out


def factorise(conv: nn.Conv2d, f: ConvFactors, r_in: int, r_out: int) -> Tucker2Conv:
    """The Tucker-2 layer of `conv` at ranks (r_in, r_out); exact at full rank."""
    layer = Tucker2Conv(conv, [r_in, r_out]).to(conv.weight.device)
    A, B = f.U_out[:, :r_out], f.U_in[:, :r_in]  # (M, r_out), (C, r_in)
    W = conv.weight.detach().double()
    core = torch.einsum("mckl,mo,ci->oikl", W, A, B)  # (r_out, r_in, K, K)
    dtype = conv.weight.dtype
    with torch.no_grad():
        layer.first.weight.copy_(B.T[:, :, None, None].to(dtype))
        layer.core.weight.copy_(core.to(dtype))
        layer.last.weight.copy_(A[:, :, None, None].to(dtype))
        if conv.bias is not None:
            layer.last.bias.copy_(conv.bias)
    return layer


def conv_pixels(model: nn.Module, names: list[str], input_size) -> dict[str, tuple[int, int]]:
    """(input pixels, output pixels) of each named conv for one image, from a forward pass."""
    sizes, hooks = {}, []
    for n in names:
        def hook(m, inp, out, n=n):
            sizes[n] = (inp[0].shape[-1] * inp[0].shape[-2], out.shape[-1] * out.shape[-2])
        hooks.append(model.get_submodule(n).register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return sizes


def _cost(conv, f: ConvFactors, r_in, r_out, kind) -> int:
    if kind == "params":
        return tucker2_params(conv, r_in, r_out)
    return tucker2_macs(conv, r_in, r_out, f.pixels_in, f.pixels_out)


def choose_ranks(convs: dict[str, nn.Conv2d], factors: dict[str, ConvFactors], target: int,
                 fixed: int, kind: str) -> dict[str, tuple[int, int]]:
    """Global greedy rank choice: remove one rank at a time where the relative error added per
    unit of cost saved is smallest, until fixed + the convs' cost (each the smaller of its
    Tucker-2 and original cost) <= target. Raises if even rank 1 everywhere cannot meet it."""
    ranks = {n: [f.S_in.numel(), f.S_out.numel()] for n, f in factors.items()}
    energy = {n: float((f.S_out ** 2).sum()) for n, f in factors.items()}

    def layer_cost(n):
        return min(_cost(convs[n], factors[n], *ranks[n], kind),
                   conv_cost(convs[n], factors[n].pixels_out, kind))

    def candidate(n, mode):  # (priority, name, mode) of removing one rank of mode 0=in/1=out
        r = ranks[n][mode]
        if r <= 1:
            return None
        s = (factors[n].S_in if mode == 0 else factors[n].S_out)[r - 1]
        trial = list(ranks[n])
        trial[mode] -= 1
        saved = _cost(convs[n], factors[n], *ranks[n], kind) - _cost(convs[n], factors[n],
                                                                      *trial, kind)
        return (float(s) ** 2 / energy[n] / max(saved, 1), n, mode)

    heap = [c for n in ranks for mode in (0, 1) if (c := candidate(n, mode))]
    heapq.heapify(heap)
    total = fixed + sum(layer_cost(n) for n in ranks)
    while total > target:
        if not heap:
            raise DsaraError(f"the low-rank budget cannot be met: rank 1 in every conv still "
                             f"costs {total} > {target} {kind}; raise --budget")
        _, n, mode = heapq.heappop(heap)
        before = layer_cost(n)
        ranks[n][mode] -= 1
        total += layer_cost(n) - before
        for m in (0, 1):  # both of this layer's candidates changed
            heap = [c for c in heap if c[1] != n or c[2] != m]
            if (c := candidate(n, m)):
                heap.append(c)
        heapq.heapify(heap)
    return {n: (r[0], r[1]) for n, r in ranks.items()}


def compress_lowrank(model: nn.Module, cfg: LowRankConfig, input_size=(3, 32, 32)
                     ) -> tuple[dict[str, dict], dict[str, dict]]:
    """Replace the eligible convs of `model` (in place) by Tucker-2 factorisations whose ranks
    meet the budget for the whole network. Returns (structure, report per eligible layer)."""
    cfg = cfg.resolved()
    convs = dict(eligible_convs(model))
    if not convs:
        raise DsaraError("this network has no conv to factorise (dense, larger than 1x1, not the "
                         "stem); cell networks are depthwise-separable already")
    pixels = conv_pixels(model, list(convs), input_size)
    factors = {n: ConvFactors.of(c, *pixels[n]) for n, c in convs.items()}
    total = network_cost(model, cfg.budget_kind, input_size)
    conv_total = sum(conv_cost(c, pixels[n][1], cfg.budget_kind) for n, c in convs.items())
    ranks = choose_ranks(convs, factors, int(cfg.budget * total), total - conv_total,
                         cfg.budget_kind)
    structure, report = {}, {}
    for n, conv in convs.items():
        r_in, r_out = ranks[n]
        f = factors[n]
        smaller = _cost(conv, f, r_in, r_out, cfg.budget_kind) < conv_cost(conv, f.pixels_out,
                                                                            cfg.budget_kind)
        report[n] = {"ranks": [r_in, r_out], "C": conv.in_channels, "M": conv.out_channels,
                     "kernel": list(conv.kernel_size), "replaced": smaller,
                     "macs_fraction_layer": tucker2_macs(conv, r_in, r_out, *pixels[n])
                     / conv_cost(conv, f.pixels_out, "macs"),
                     "relative_error_bound": float(((f.S_in[r_in:] ** 2).sum()
                                                    + (f.S_out[r_out:] ** 2).sum())
                                                   / (f.S_out ** 2).sum())}
        if smaller:
            set_module(model, n, factorise(conv, f, r_in, r_out))
            structure[n] = {"type": "tucker2", "ranks": [r_in, r_out]}
    return structure, report


def network_cost(model: nn.Module, kind: str, input_size) -> int:
    from ..arch.profile import count_macs, count_parameters

    return count_parameters(model) if kind == "params" else count_macs(model, input_size)



def apply(model, cfg, train_cfg, fit, input_size, device):
    """`dsara compress --method lowrank` (the `Compressor` record's apply); a robust fine-tune
    follows."""
    lcfg = LowRankConfig(0.5 if cfg.budget is None else cfg.budget, cfg.budget_kind)
    structure, layers = compress_lowrank(model, lcfg, input_size)
    return structure, layers, dataclasses.asdict(lcfg.resolved())


RECORD = Compressor("lowrank", apply, finetunes=True)
