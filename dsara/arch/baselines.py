"""Hand-designed baselines, trained and evaluated through the same path as searched architectures.

ResNet-18 and PreAct-ResNet-18 (the CIFAR variants: 3x3 stem, no max-pool), WideResNets with a free
depth and width per stage (Zagoruyko & Komodakis; RobustWRN, Huang et al., NeurIPS 2021), and a tiny
registered variant of each for tests. Like `dsara.arch.network.Network` they normalize inside the model
(inputs in [0, 1]) and accept ``return_aux`` (they have no auxiliary head, so it is always None).

WRN-34-R is the RobustWRN authors' robust configuration (their `RobustWideResNet34`, as released in
github.com/HanxunH/RobustWRN): 5 blocks per stage, stage channels 320 / 640 / 512 — i.e. widths
20 / 20 / 8 over the 16 / 32 / 64 base — wider early stages and a narrower last stage.

    model = build_baseline("wrn34_10", num_classes=10)     # also "WRN-34-10", "ResNet-18", ...
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch.nn.functional as F
from torch import nn

from ..errors import DsaraError
from .network import Normalize
from .space import CIFAR10_MEAN, CIFAR10_STD


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)


def shortcut(c_in: int, c_out: int, stride: int, bn: bool) -> nn.Module | None:
    """A 1x1 projection when the shape changes; None means identity."""
    if stride == 1 and c_in == c_out:
        return None
    conv = nn.Conv2d(c_in, c_out, 1, stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out)) if bn else conv


class BasicBlock(nn.Module):
    """ResNet basic block (post-activation)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.shortcut = shortcut(c_in, c_out, stride, bn=True)

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class PreActBlock(nn.Module):
    """Pre-activation block (He et al., 2016); the projection takes the activated input, as in
    PreAct-ResNet and WideResNet."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), conv3x3(c_in, c_out, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), conv3x3(c_out, c_out)
        self.shortcut = shortcut(c_in, c_out, stride, bn=False)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        return self.conv2(F.relu(self.bn2(self.conv1(a)))) + skip


BLOCK_NAMES = {BasicBlock: "basic", PreActBlock: "preact"}


class Backbone(nn.Module):
    """Stem, stages of residual blocks, optional final BN-ReLU (pre-activation nets), pool, linear.

    `depths[i]` blocks of `widths[i]` channels in stage i; every stage after the first starts with
    stride 2. Inputs are images in [0, 1].
    """

    has_auxiliary = False

    def __init__(self, block: type[nn.Module], depths: Sequence[int], widths: Sequence[int],
                 stem_channels: int, num_classes: int = 10, stem_bn: bool = True,
                 final_bn: bool = False, mean=CIFAR10_MEAN, std=CIFAR10_STD, name: str = ""):
        super().__init__()
        if len(depths) != len(widths) or not depths or min(depths) < 1 or min(widths) < 1:
            raise DsaraError(f"baseline {name or '?'}: need one positive depth and width per "
                             f"stage, got depths {list(depths)} and widths {list(widths)}")
        self.baseline_name = name
        # what rebuilds this net without dsara (dsara.export.standalone)
        self.layout = {"kind": "residual", "block": BLOCK_NAMES[block], "depths": list(depths),
                       "widths": list(widths), "stem_channels": stem_channels,
                       "stem_bn": stem_bn, "final_bn": final_bn}
        self.drop_path_prob = 0.0  # uniform with Network; baselines have no drop-path
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(conv3x3(len(mean), stem_channels),
                                  *([nn.BatchNorm2d(stem_channels), nn.ReLU()] if stem_bn else []))
        layers, c = [], stem_channels
        for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            for j in range(depth):
                layers.append(block(c, width, 2 if i > 0 and j == 0 else 1))
                c = width
        self.layers = nn.Sequential(*layers)
        self.final = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU()) if final_bn else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x, return_aux: bool = False):
        h = self.final(self.layers(self.stem(self.normalize(x))))
        logits = self.classifier(self.pool(h).flatten(1))
        return (logits, None) if return_aux else logits


def resnet(depths, widths, **kw) -> Backbone:
    return Backbone(BasicBlock, depths, widths, stem_channels=widths[0], **kw)


def preact_resnet(depths, widths, **kw) -> Backbone:
    return Backbone(PreActBlock, depths, widths, stem_channels=widths[0], stem_bn=False,
                    final_bn=True, **kw)


def wide_resnet(depths, widths, stem_channels: int = 16, **kw) -> Backbone:
    """A WideResNet with per-stage depths (blocks) and widths (channels): WRN-d-k has
    depths ((d - 4) / 6,) * 3 and widths (16k, 32k, 64k)."""
    return Backbone(PreActBlock, depths, widths, stem_channels=stem_channels, stem_bn=False,
                    final_bn=True, **kw)


# name -> partial(family, depths, widths, **fixed), called with num_classes=, mean=, std=, name=;
# `build_baseline` may swap in scaled widths, so every entry keeps them as its 2nd argument. The
# tiny variants are seconds-per-epoch nets for tests and quickstarts, registered and tested like
# the real ones.
BASELINES: dict[str, partial] = {
    "resnet18": partial(resnet, (2, 2, 2, 2), (64, 128, 256, 512)),
    "preact_resnet18": partial(preact_resnet, (2, 2, 2, 2), (64, 128, 256, 512)),
    "wrn28_10": partial(wide_resnet, (4, 4, 4), (160, 320, 640)),
    "wrn34_10": partial(wide_resnet, (5, 5, 5), (160, 320, 640)),
    "wrn34_r": partial(wide_resnet, (5, 5, 5), (320, 640, 512)),  # RobustWRN's WRN-34-R
    "resnet_tiny": partial(resnet, (1, 1), (8, 16)),
    "preact_resnet_tiny": partial(preact_resnet, (1, 1), (8, 16)),
    "wrn_tiny": partial(wide_resnet, (1, 1, 1), (8, 16, 8), stem_channels=4),
}


def _key(name: str) -> str:
    return str(name).lower().replace("-", "").replace("_", "")


_BY_KEY = {_key(k): k for k in BASELINES}


def baseline_name(name: str) -> str | None:
    """The registry name of a baseline ("WRN-34-10" -> "wrn34_10"), or None if it is not one."""
    return _BY_KEY.get(_key(name))


def list_baselines() -> list[str]:
    return list(BASELINES)


def base_width(name: str) -> int:
    """Channels of the first stage of a registered baseline (ResNet-18: 64, WRN-34-10: 160)."""
    return BASELINES[_registered(name)].args[1][0]


def scaled_widths(widths: Sequence[int], width: int) -> tuple[int, ...]:
    """Stage widths scaled so that the first stage has `width` channels (ratios kept, >= 1)."""
    return tuple(max(1, round(w * width / widths[0])) for w in widths)


def _registered(name: str) -> str:
    key = baseline_name(name)
    if key is None:
        raise DsaraError(f"unknown baseline {name!r}; baselines: {', '.join(BASELINES)}")
    return key


def build_baseline(name: str, num_classes: int = 10, mean=CIFAR10_MEAN,
                   std=CIFAR10_STD, width: int | None = None) -> Backbone:
    """Build a registered baseline by name (case, '-' and '_' do not matter).

    `width` rescales every stage so that the first one has `width` channels (the stage ratios
    stay, e.g. ResNet-18 at width 32 has stages 32/64/128/256); None keeps the published widths.
    Equal-parameter comparisons (`dsara.arch.budget`) pick it."""
    key = _registered(name)
    if num_classes < 2:
        raise DsaraError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
    if width is not None and width < 1:
        raise DsaraError(f"baseline width must be >= 1 channel, got {width}")
    factory = BASELINES[key]
    depths, widths = factory.args
    widths = widths if width is None else scaled_widths(widths, width)
    return factory.func(depths, widths, **factory.keywords, num_classes=int(num_classes),
                        mean=tuple(mean), std=tuple(std), name=key)
