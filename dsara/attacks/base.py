"""The L-inf threat model every attack shares: eps parsing and the check that an
adversarial batch lies in its eps-ball and in [0, 1].
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch

from ..errors import DsaraError

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
