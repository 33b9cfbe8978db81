"""The compressed conv layers, which convs may be compressed, and how a compressed network is
rebuilt from the structure its checkpoint records.

A compressed network is its original network with some `nn.Conv2d`s replaced, in place, by

- `GDWSConv`   channel repeat -> depthwise KxK (G kernels) -> pointwise 1x1 (M x G)  [gdws]
- `Tucker2Conv` pointwise C -> r_in -> KxK r_in -> r_out -> pointwise r_out -> M     [lowrank]

The checkpoint records, per replaced conv, only integers (``{"type": "gdws", "counts": [...]}`` or
``{"type": "tucker2", "ranks": [r_in, r_out]}``); the geometry (stride, padding, dilation, bias) is
the original conv's, which the rebuilt original network supplies. So a compressed checkpoint loads
with ``torch.load(weights_only=True)`` and no pickled code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import DsaraError


class GDWSConv(nn.Module):
    """Generalized depthwise-separable conv (Dbouk & Shanbhag, NeurIPS 2021): input channel c is
    repeated counts[c] times, each copy filtered by its own KxK kernel, and a 1x1 conv mixes the
    G = sum(counts) results into the M outputs."""

    def __init__(self, conv: nn.Conv2d, counts: list[int]):
        super().__init__()
        C, M = conv.in_channels, conv.out_channels
        if len(counts) != C or min(counts) < 0 or sum(counts) < 1:
            raise DsaraError(f"GDWS layer: need {C} non-negative kernel counts with a positive "
                             f"sum, got {counts}")
        G = sum(counts)
        self.counts = list(counts)
        # equal counts: the repeat is a grouped conv's own layout, no gather needed
        self.uniform = len(set(counts)) == 1
        index = torch.repeat_interleave(torch.arange(C), torch.tensor(counts))
        self.register_buffer("index", index, persistent=False)  # rebuilt from counts
        self.depthwise = nn.Conv2d(C if self.uniform else G, G, conv.kernel_size, conv.stride,
                                   conv.padding, conv.dilation, groups=C if self.uniform else G,
                                   bias=False)
        self.pointwise = nn.Conv2d(G, M, 1, bias=conv.bias is not None)

    def forward(self, x):  # x (B, C, H, W)
        if not self.uniform:
            x = x.index_select(1, self.index)  # (B, G, H, W)
        return self.pointwise(self.depthwise(x))


class Tucker2Conv(nn.Module):
    """Tucker-2 factorised conv: 1x1 C -> r_in, KxK r_in -> r_out (the core, the original stride,
    padding and dilation), 1x1 r_out -> M (with the original bias)."""

    def __init__(self, conv: nn.Conv2d, ranks: list[int]):
        super().__init__()
        r_in, r_out = (int(r) for r in ranks)
        if not (1 <= r_in <= conv.in_channels and 1 <= r_out <= conv.out_channels):
            raise DsaraError(f"Tucker-2 layer: ranks {ranks} outside [1, {conv.in_channels}] x "
                             f"[1, {conv.out_channels}]")
        self.ranks = [r_in, r_out]
        self.first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
        self.core = nn.Conv2d(r_in, r_out, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, bias=False)
        self.last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)

    def forward(self, x):
        return self.last(self.core(self.first(x)))


LAYERS = {"gdws": (GDWSConv, "counts"), "tucker2": (Tucker2Conv, "ranks")}


def eligible_convs(model: nn.Module) -> Iterator[tuple[str, nn.Conv2d]]:
    """The convs GDWS and Tucker-2 act on: dense (groups = 1) with a kernel larger than 1x1 and
    zero padding, except the stem (the first conv) and auxiliary heads (unused at inference)."""
    first = True
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if first:  # the stem sees the raw image: the authors leave it alone
            first = False
            continue
        if ("auxiliary" in name or m.groups != 1 or m.kernel_size == (1, 1)
                or m.padding_mode != "zeros" or isinstance(m.padding, str)):
            continue
        yield name, m


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def apply_structure(model: nn.Module, layers: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Replace the named convs of `model` by empty compressed layers of the recorded structure
    (weights come from the state dict loaded next)."""
    convs = dict(eligible_convs(model))
    for name, rec in layers.items():
        kind = rec.get("type") if isinstance(rec, Mapping) else None
        if kind not in LAYERS:
            raise DsaraError(f"compressed layer {name!r} has unknown type {kind!r}; known: "
                             f"{', '.join(LAYERS)}")
        if name not in convs:
            raise DsaraError(f"compressed layer {name!r} is not a compressible conv of the "
                             "original network; the checkpoint belongs to another network")
        cls, key = LAYERS[kind]
        set_module(model, name, cls(convs[name], [int(v) for v in rec[key]]))
    return model


def build_compressed(spec: Mapping[str, Any], build_base) -> nn.Module:
    """The network of a ``{"kind": "compressed", "base": spec, "layers": {...}}`` model spec;
    `build_base` builds the original network from its spec."""
    if "base" not in spec or not isinstance(spec.get("layers"), Mapping):
        raise DsaraError("compressed model spec needs 'base' and 'layers'")
    return apply_structure(build_base(spec["base"]), spec["layers"])
