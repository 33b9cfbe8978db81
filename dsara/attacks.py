"""L-infinity attacks on models whose inputs are images in [0, 1].

The perturbation is an fp32 leaf and the loss is computed in fp32, so input gradients are fp32 even
when the model runs under bf16 autocast. Attacks only take gradients with respect to the input
(`torch.autograd.grad`), so they never touch the models' parameter gradients, and they leave the
model's train/eval mode as the caller set it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DsaraError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BOUND_TOL = 1e-6  # fp32 rounding of x + delta; anything beyond is an attack outside its ball


class BrokenAttack(DsaraError):
    """An attack returned images outside its eps-ball or outside [0, 1]: its accuracy is void."""


def check_adversarial(x: torch.Tensor, x_adv: torch.Tensor, eps: float, name: str = "attack",
                      tol: float = BOUND_TOL) -> None:
    """Raise `BrokenAttack` unless ``||x_adv - x||_inf <= eps + tol`` and x_adv lies in [0, 1].

    Every attack an evaluation runs goes through this, batch by batch, so an attack that lost its
    projection (or its clamp) cannot report an accuracy. One host sync per call."""
    if x_adv.shape != x.shape:
        raise BrokenAttack(f"attack {name} returned shape {tuple(x_adv.shape)} for inputs of "
                           f"shape {tuple(x.shape)}")
    diff = (x_adv.detach().float() - x.detach().float()).abs()
    dist, lo, hi = torch.stack([diff.amax(), x_adv.amin().float(), x_adv.amax().float()]).tolist()
    if not (dist <= eps + tol and lo >= 0 and hi <= 1):  # also catches NaN
        raise BrokenAttack(f"attack {name} left its bounds: max |x_adv - x| = {dist:.6g} (eps "
                           f"{eps:.6g}), pixels in [{lo:.4g}, {hi:.4g}] (must be [0, 1]); its "
                           "accuracy would be meaningless, fix the attack")


def parse_eps(value: str | float) -> float:
    """An L-inf radius in [0, 1] pixel units as ``8/255`` or ``0.031``; a value above 1 (8 meant
    as 8/255) or below 0 is refused in one line."""
    if isinstance(value, (int, float)):
        eps, text = float(value), f"{value:g}"
    else:
        text = str(value).strip()
        m = re.fullmatch(r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*/\s*([0-9]*\.?[0-9]+)",
                         text)
        try:
            eps = float(m.group(1)) / float(m.group(2)) if m else float(text)
        except (ValueError, ZeroDivisionError):
            raise DsaraError(f"eps {text!r} is not a number; write it as 8/255 or 0.031") from None
    if eps < 0:
        raise DsaraError(f"eps {text} is negative; a radius is >= 0, in [0, 1] pixel units, "
                         "e.g. 8/255")
    if not math.isfinite(eps):
        raise DsaraError(f"eps {text} is not a finite number; write it as 8/255 or 0.031")
    if eps > 1:
        raise DsaraError(f"eps {text} is larger than 1, but eps is in [0, 1] pixel units; did "
                         f"you mean {eps:g}/255?")
    return eps


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
