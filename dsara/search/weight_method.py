"""The supernet's weight step with any registered training method (``weight_method``).

The DSARA authors train the supernet's weights with PGD-AT (CE on PGD examples), the default.
``--set weight_method=trades`` (or any name of `dsara.train.methods.METHODS` that needs no run-level
setup) trains them with that method's loss instead, crafted by the method itself from the clean
weight-train batch with the search's eps, step size and PGD steps, so a search can use the loss
its architecture will be retrained with (the method's own attack mode and start included: TRADES
crafts in eval mode from x + 0.001 N(0, 1), as in `dsara train`). ``weight_method_options`` holds the method's constants
(as ``method_options`` of `dsara train`), ``weight_beta`` the TRADES / MART beta.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import DsaraError


class _WithAux(nn.Module):
    """The training methods call ``model(x, return_aux=True)``; a supernet has no auxiliary head."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @property
    def cells(self):  # iat-manifold mixes at the supernet's cell boundaries
        return self.net.cells

    def forward(self, x, return_aux: bool = False):
        logits = self.net(x)
        return (logits, None) if return_aux else logits


def check_weight_method(name: str, options: dict[str, Any]) -> None:
    """Fail up front on an unknown method, one that needs a whole run's data, or bad options."""
    from ..train.methods import METHODS, SETUPS, method_options

    usable = [m for m in METHODS if m not in SETUPS]
    if name not in usable:
        why = " (it needs a run-level setup: a pool, a teacher)" if name in SETUPS else ""
        raise DsaraError(f"weight_method {name!r} cannot train the supernet{why}; usable: "
                         f"{', '.join(usable)}")
    method_options(name, options)


def method_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg, amp
                ) -> torch.Tensor:
    """The weight step's loss under cfg.weight_method on the clean batch (x, y)."""
    from ..train.losses import AdvParams
    from ..train.methods import get_method, method_options

    spec = get_method(cfg.weight_method)  # the method's own attack mode and start
    params = AdvParams(cfg.eps, cfg.step_size, cfg.pgd_steps, cfg.weight_beta, 0.0,
                       method_options(cfg.weight_method, cfg.weight_method_options),
                       craft_mode=spec.craft_mode, start=spec.start)
    with amp():
        loss, _terms = spec.fn(_WithAux(model), x, y, params)
    return loss.float()
