"""The DARTS operations, keyed by name.

Every entry of `OPS` is ``name -> factory(C, stride, affine, act) -> nn.Module`` mapping C channels
to C channels (stride 2 halves the resolution); `act` builds the activation that starts each conv
block (``C -> module``, ReLU unless the architecture chooses another, see `dsara.arch.activations`). Inside the supernet BatchNorm is non-affine (DARTS: the
architecture weights, not BN, should scale the ops); in discrete networks it is affine.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import DsaraError
from .activations import Act, relu


class ReLUConvBN(nn.Sequential):
    """ReLU (or `act`) -> conv -> BN, the DARTS building block for preprocessing."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True, act: Act = relu):
        super().__init__(
            act(C_in),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU (or `act`) -> depthwise dilated conv -> pointwise conv -> BN."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True,
                 act: Act = relu):
        super().__init__(
            act(C_in),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in,
                      bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConv blocks with dilation 1; only the first one strides (DARTS)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True, act: Act = relu):
        super().__init__(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine, act),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine, act),
        )


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """The `none` op: an all-zero output at the op's output resolution."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset 1x1 stride-2 convs, concatenated (skip at stride 2)."""

    def __init__(self, C_in, C_out, affine=True, act: Act = relu):
        super().__init__()
        if C_out % 2:
            raise DsaraError(f"FactorizedReduce needs an even channel count, got {C_out}; "
                             "choose C and stage widths that give even channel counts")
        self.relu = act(C_in)  # named relu for the state dict keys of existing checkpoints
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        # The second conv sees the input shifted by one pixel; odd sizes are padded first.
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            x = nn.functional.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        out = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
        return self.bn(out)


def _pool(kind: str) -> Callable[..., nn.Module]:
    def make(C, stride, affine, act=relu):  # pools have no activation
        if kind == "max":
            return nn.MaxPool2d(3, stride=stride, padding=1)
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    return make


OPS: dict[str, Callable[..., nn.Module]] = {
    "none": lambda C, stride, affine, act=relu: Zero(stride),
    "skip_connect": lambda C, stride, affine, act=relu: (
        Identity() if stride == 1 else FactorizedReduce(C, C, affine, act)),
    "max_pool_3x3": _pool("max"),
    "avg_pool_3x3": _pool("avg"),
    "sep_conv_3x3": lambda C, stride, affine, act=relu: SepConv(C, C, 3, stride, 1, affine, act),
    "sep_conv_5x5": lambda C, stride, affine, act=relu: SepConv(C, C, 5, stride, 2, affine, act),
    "dil_conv_3x3": lambda C, stride, affine, act=relu: DilConv(C, C, 3, stride, 2, 2, affine,
                                                                act),
    "dil_conv_5x5": lambda C, stride, affine, act=relu: DilConv(C, C, 5, stride, 4, 2, affine,
                                                                act),
}

# Ops without weights; a search that collapses onto these is the known DARTS failure.
PARAMETER_FREE = frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3"})
POOLS = frozenset({"max_pool_3x3", "avg_pool_3x3"})


def check_op(name: str, where: str = "") -> str:
    """Return `name` if it is a registered op, else raise with the list of known ops."""
    if name not in OPS:
        at = f" in {where}" if where else ""
        raise DsaraError(f"unknown op {name!r}{at}; known ops: {', '.join(OPS)}")
    return name


def make_op(name: str, C: int, stride: int, affine: bool = True, act: Act = relu) -> nn.Module:
    """Build op `name` on C channels with activation `act`; pools get a non-affine BN when used
    in the supernet."""
    return OPS[check_op(name)](C, stride, affine, act)
