"""L-infinity attacks on models whose inputs are images in [0, 1].

The perturbation is an fp32 leaf and the loss is computed in fp32, so input gradients are fp32 even
when the model runs under bf16 autocast. Attacks only take gradients with respect to the input
(`torch.autograd.grad`), so they never touch the models' parameter gradients, and they leave the
model's train/eval mode as the caller set it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DsaraError
from .base import LossFn


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y)


def _input_grad(model: nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor,
                loss_fn: LossFn) -> torch.Tensor:
    delta.requires_grad_(True)
    loss = loss_fn(model(x + delta), y)
    (grad,) = torch.autograd.grad(loss, delta)
    return grad


def _random_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    delta = (2 * noise - 1) * eps
    return (x + delta).clamp_(0, 1) - x  # keep x + delta inside the image box


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
        steps: int, random_start: bool = True, loss_fn: LossFn | None = None,
        generator: torch.Generator | None = None, start: torch.Tensor | None = None
        ) -> torch.Tensor:
    """Madry et al. L-inf PGD: `steps` signed-gradient ascent steps projected onto the eps-ball
    around x and onto [0, 1]. Returns the adversarial images, detached, in x's dtype.

    `start`, if given, is the initial perturbation instead of a fresh random one (a data-parallel
    search passes each rank its shard of the global batch's random start)."""
    if eps < 0 or steps < 0 or step_size < 0:
        raise DsaraError(f"PGD needs eps, step size and steps >= 0; got {eps}, {step_size}, "
                         f"{steps}")
    loss_fn = loss_fn or _ce
    x32 = x.detach().float()
    if steps == 0:  # eps = 0 still runs the loop: "eps 0 gives clean accuracy" must test it
        return x.detach().clone()
    if start is not None:
        delta = (x32 + start.float().clamp(-eps, eps)).clamp_(0, 1) - x32
    else:
        delta = _random_start(x32, eps, generator) if random_start else torch.zeros_like(x32)
    for _ in range(steps):
        grad = _input_grad(model, x32, delta, y, loss_fn)
        with torch.no_grad():
            delta = (delta + step_size * grad.sign()).clamp_(-eps, eps)
            delta = (x32 + delta).clamp_(0, 1) - x32
    return (x32 + delta).detach().to(x.dtype)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
         step_size: float | None = None, random_start: bool = True,
         loss_fn: LossFn | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """FGSM; with random start (Wong et al., 2020) the step defaults to 1.25 * eps.
    Without random start it is the classic single step of size eps."""
    if step_size is None:
        step_size = 1.25 * eps if random_start else eps
    return pgd(model, x, y, eps, step_size, 1, random_start, loss_fn, generator)
