"""A dsara network rebuilt with nothing but PyTorch: the body of an exported RobustBench `model.py`.

`dsara export --format robustbench` copies this file verbatim into ``model.py`` and appends the
network's layout as JSON text (``LAYOUT``, read with `json.loads`, never evaluated), so the folder
builds the network and loads its weights on a machine without dsara::

    import model
    net = model.load_model()            # the weights file beside model.py, eval mode
    logits = net(images)                # images in [0, 1], (B, 3, H, W); normalization is inside

This module must import only the standard library and torch. Module and parameter names mirror
`dsara.arch.network`, `dsara.arch.ops` and `dsara.arch.baselines` exactly, so a dsara state dict loads unchanged
(the auxiliary head, a training-only branch, is left out of the export). A test builds every kind
of network both ways and compares the logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


# ----------------------------------------------------------------------------- activations

class Sparta(nn.Module):
    """dsara's reconstruction of Sparta: x * sigmoid(per-channel k x k conv of x + bias)."""

    def __init__(self, c, kernel=3):
        super().__init__()
        self.gate = nn.Conv2d(c, c, kernel, padding=kernel // 2, groups=c, bias=True)

    def forward(self, x):
        return x * torch.sigmoid(self.gate(x))


def activation(spec):
    """``channels -> module`` for ``{"name": "relu" | "swish" | "sparta", **options}``."""
    name = spec.get("name", "relu")
    if name == "relu":
        return lambda c: nn.ReLU()
    if name == "swish":
        return lambda c: nn.SiLU()
    if name == "sparta":
        return lambda c: Sparta(c, int(spec.get("kernel", 3)))
    raise ValueError(f"unknown activation {name!r}")


# ----------------------------------------------------------------------------- DARTS operations

def relu_conv_bn(c_in, c_out, kernel, stride, padding, act):
    return nn.Sequential(act(c_in), nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(c_out))


def dil_conv(c_in, c_out, kernel, stride, padding, dilation, act):
    return nn.Sequential(
        act(c_in),
        nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in,
                  bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


def sep_conv(c, kernel, stride, padding, act):
    return nn.Sequential(dil_conv(c, c, kernel, stride, padding, 1, act),
                         dil_conv(c, c, kernel, 1, padding, 1, act))


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    def __init__(self, c_in, c_out, act):
        super().__init__()
        self.relu = act(c_in)  # dsara's name, whatever the activation
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        x = self.relu(x)
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def make_op(name, c, stride, act):
    if name == "none":
        return Zero(stride)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, act)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    kernel = int(name[-1])
    if name.startswith("sep_conv"):
        return sep_conv(c, kernel, stride, kernel // 2, act)
    if name.startswith("dil_conv"):
        return dil_conv(c, c, kernel, stride, 2 * (kernel // 2), 2, act)
    raise ValueError(f"unknown op {name!r}")


# ----------------------------------------------------------------------------- cell networks

class Cell(nn.Module):
    def __init__(self, genotype, c_pp, c_p, c, reduction, reduction_prev, act):
        super().__init__()
        self.pre0 = (FactorizedReduce(c_pp, c, act) if reduction_prev
                     else relu_conv_bn(c_pp, c, 1, 1, 0, act))
        self.pre1 = relu_conv_bn(c_p, c, 1, 1, 0, act)
        self.ops = nn.ModuleList(make_op(op, c, 2 if reduction and src < 2 else 1, act)
                                 for op, src in genotype["edges"])
        self.inputs = [src for _, src in genotype["edges"]]
        self.concat = list(genotype["concat"])

    def forward(self, s0, s1):
        states = [self.pre0(s0), self.pre1(s1)]
        for k in range(0, len(self.ops), 2):
            states.append(self.ops[k](states[self.inputs[k]])
                          + self.ops[k + 1](states[self.inputs[k + 1]]))
        return torch.cat([states[i] for i in self.concat], dim=1)


def input_normalization(layout):
    if layout.get("normalize", True):
        return Normalize(layout["mean"], layout["std"])
    return nn.Identity()  # raw [0, 1] pixels into the stem


class CellNetwork(nn.Module):
    def __init__(self, layout):
        super().__init__()
        c_stem = layout["stem_channels"]
        self.normalize = input_normalization(layout)
        self.stem = nn.Sequential(nn.Conv2d(len(layout["mean"]), c_stem, 3, padding=1,
                                            bias=False), nn.BatchNorm2d(c_stem))
        c_pp, c_p, reduction_prev = c_stem, c_stem, False
        self.cells = nn.ModuleList()
        for cell_type, c, reduction in layout["plan"]:
            genotype = layout["genotype"][cell_type]
            act = activation(layout.get("activations", {}).get(cell_type, {}))
            self.cells.append(Cell(genotype, c_pp, c_p, c, reduction, reduction_prev, act))
            c_pp, c_p, reduction_prev = c_p, len(genotype["concat"]) * c, reduction
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, layout["num_classes"])

    def forward(self, x):
        s0 = s1 = self.stem(self.normalize(x))
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.pool(s1).flatten(1))


# ----------------------------------------------------------------------------- residual baselines

def conv3x3(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)


def shortcut(c_in, c_out, stride, bn):
    if stride == 1 and c_in == c_out:
        return None
    conv = nn.Conv2d(c_in, c_out, 1, stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out)) if bn else conv


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.shortcut = shortcut(c_in, c_out, stride, bn=True)

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class PreActBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), conv3x3(c_in, c_out, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), conv3x3(c_out, c_out)
        self.shortcut = shortcut(c_in, c_out, stride, bn=False)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        return self.conv2(F.relu(self.bn2(self.conv1(a)))) + skip


BLOCKS = {"basic": BasicBlock, "preact": PreActBlock}


class ResidualNetwork(nn.Module):
    def __init__(self, layout):
        super().__init__()
        block, c = BLOCKS[layout["block"]], layout["stem_channels"]
        self.normalize = input_normalization(layout)
        stem_bn = [nn.BatchNorm2d(c), nn.ReLU()] if layout["stem_bn"] else []
        self.stem = nn.Sequential(conv3x3(len(layout["mean"]), c), *stem_bn)
        layers = []
        for i, (depth, width) in enumerate(zip(layout["depths"], layout["widths"])):
            for j in range(depth):
                layers.append(block(c, width, 2 if i > 0 and j == 0 else 1))
                c = width
        self.layers = nn.Sequential(*layers)
        self.final = (nn.Sequential(nn.BatchNorm2d(c), nn.ReLU()) if layout["final_bn"]
                      else nn.Identity())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, layout["num_classes"])

    def forward(self, x):
        h = self.final(self.layers(self.stem(self.normalize(x))))
        return self.classifier(self.pool(h).flatten(1))


# ----------------------------------------------------------------------------- entry points

KINDS = {"cells": CellNetwork, "residual": ResidualNetwork}


def build(layout):
    """The network of `layout` (a dict, see ``LAYOUT``) with fresh weights, in eval mode."""
    return KINDS[layout["kind"]](layout).eval()


def load_model(weights=None, layout=None, map_location="cpu"):
    """The exported network with its weights (default: the file named in the layout, beside this
    file), in eval mode. Loads with ``weights_only=True``: no pickled code runs."""
    layout = layout or json.loads(LAYOUT)
    path = Path(weights) if weights else Path(__file__).with_name(layout["weights"])
    model = build(layout)
    model.load_state_dict(torch.load(path, map_location=map_location, weights_only=True))
    return model.eval()


LAYOUT = "{}"  # replaced by the exporter with the network's layout as JSON text
