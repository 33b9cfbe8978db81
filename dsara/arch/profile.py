"""Parameter and multiply-add counts of a model (the figures papers report)."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module, include_auxiliary: bool = False) -> int:
    """Trainable parameters; the auxiliary head is excluded by default, as the DARTS papers do."""
    return sum(p.numel() for name, p in model.named_parameters()
               if include_auxiliary or "auxiliary" not in name)


@torch.no_grad()
def count_macs(model: nn.Module, input_size=(3, 32, 32)) -> int:
    """Multiply-adds of one eval-mode forward pass of one image (conv and linear layers)."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] \
            * m.kernel_size[1]

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total
