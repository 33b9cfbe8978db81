"""Interpolated Adversarial Training (Lamb et al., 2019/2022) and its manifold variant.

Per batch (following a third-party reimplementation, SEEDS.md [2nd]): PGD on the *unmixed* batch
with the model in eval mode, then

    loss = 1/2 Mix(x, y) + 1/2 Mix(x_adv, y),
    Mix(x, y) = lam CE(f(x~), y) + (1 - lam) CE(f(x~), y[pi]),   x~ = lam x + (1 - lam) x[pi],

each Mix with its own lam ~ Beta(alpha, alpha) and permutation pi of the batch (alpha = 1).
`iat-manifold` mixes a hidden state instead of the input: at a boundary drawn uniformly per Mix
from {the input} and the boundaries between cells of a cell network (or between the stages of a
baseline). The mixing happens in a forward pre-hook, so any network with `cells` or residual
`layers` works without a second copy of its forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DsaraError
from ..losses import AdvParams, Terms, craft
from .base import Method


@dataclass(frozen=True)
class IATOptions:
    alpha: float = 1.0  # lam ~ Beta(alpha, alpha); 1 = uniform (Lamb et al.'s choice)

    def validate(self) -> None:
        if not self.alpha > 0:
            raise DsaraError(f"iat: alpha must be > 0 (Beta(alpha, alpha)), got {self.alpha}")


def draw_mix(batch: int, alpha: float, generator: torch.Generator | None, device
             ) -> tuple[float, torch.Tensor]:
    """(lam ~ Beta(alpha, alpha), a permutation of the batch), both from `generator` so that a
    resumed run draws the same ones (torch has no seeded Beta sampler: numpy draws from a seed
    taken from the generator)."""
    seed = int(torch.randint(2**62, (1,), generator=generator, device=device).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    return lam, torch.randperm(batch, generator=generator, device=device)


def mix_ce(logits: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """lam CE(logits, y) + (1 - lam) CE(logits, y[perm]) (= CE against the mixed one-hot target)."""
    logits = logits.float()
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])


def _mix(h: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    return lam * h + (1 - lam) * h[perm]


def mix_points(model: nn.Module) -> list[nn.Module | None]:
    """Where `iat-manifold` may mix: None (the input), then the module whose inputs are the state
    at each inner boundary: every cell after the first (cell networks) or the first block of every
    stage after the first (baselines: the blocks that downsample)."""
    if hasattr(model, "cells"):
        return [None, *list(model.cells)[1:]]
    if hasattr(model, "layers"):
        return [None, *[b for b in model.layers if getattr(b.conv1, "stride", (1,))[0] == 2]]
    return [None]


def _forward_mixed(model, x, lam, perm, point: nn.Module | None):
    """The model's (logits, aux) with the state entering `point` mixed (the input if None)."""
    if point is None:
        return model(_mix(x, lam, perm), return_aux=True)

    def hook(_module, args):  # cells take (s0, s1, drop_prob or alpha weights); blocks (h,)
        return tuple(_mix(a, lam, perm) if torch.is_tensor(a) and a.dim() == 4 else a
                     for a in args)

    handle = point.register_forward_pre_hook(hook)
    try:
        return model(x, return_aux=True)
    finally:
        handle.remove()


def _mix_term(model, x, y, p: AdvParams, generator, manifold: bool, aux: bool = True
              ) -> torch.Tensor:
    opts = p.options or IATOptions()
    lam, perm = draw_mix(x.shape[0], opts.alpha, generator, x.device)
    points = mix_points(model) if manifold else [None]
    k = int(torch.randint(len(points), (1,), generator=generator, device=x.device).item())
    logits, aux_logits = _forward_mixed(model, x, lam, perm, points[k])
    loss = mix_ce(logits, y, lam, perm)
    if aux and aux_logits is not None and p.aux_weight > 0:
        # an auxiliary head before the mixing point saw the unmixed state: plain CE there
        before = points[k] is not None and list(model.cells).index(points[k]) > model.aux_index
        loss = loss + p.aux_weight * (F.cross_entropy(aux_logits.float(), y) if before
                                      else mix_ce(aux_logits, y, lam, perm))
    return loss


def _iat(model, x, y, p: AdvParams, generator, manifold: bool) -> tuple[torch.Tensor, Terms]:
    x_adv = craft(model, x, y, p, generator=generator)
    clean = _mix_term(model, x, y, p, generator, manifold)
    # aux_input = "clean": the auxiliary loss of the clean mix only
    adv = _mix_term(model, x_adv, y, p, generator, manifold, aux=p.aux_input != "clean")
    return 0.5 * clean + 0.5 * adv, {"mix_clean": clean.detach(), "mix_adv": adv.detach()}


def iat(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """IAT: 1/2 mixup-CE of the clean batch + 1/2 mixup-CE of its PGD examples (input mixup)."""
    return _iat(model, x, y, p, generator, manifold=False)


def iat_manifold(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """IAT with manifold mixup: the mix happens at a random cell (or stage) boundary."""
    return _iat(model, x, y, p, generator, manifold=True)


RECORDS = (
    # Lamb et al.: PGD-10 of 2/255 at 8/255 on the unmixed batch, model in eval mode
    Method("iat", iat, 0.25, 10, "eval", options=IATOptions),
    Method("iat-manifold", iat_manifold, 0.25, 10, "eval", options=IATOptions),
)
