"""SO-AT: adversarial training on second-order adversarial examples (Qian et al., arXiv
2207.01396; AMCS 2024).

The abstract says the examples come from a second-order approximation of the loss, with H^-1 never
formed and the direction found in a Krylov subspace of Hessian-vector products (GMRES in the
journal version), and that models trained on them beat first-order AT. The attack is the one of
`dsara.attacks.krylov` (shared with `dsara evaluate --attacks so-krylov`), itself our **[recon]**: per
outer step g = grad_x CE, m Krylov iterations (CG by default: the input Hessian of a ReLU net is
positive semi-definite) for d ~ H^-1 g by double backprop, x <- clip(x + step * sign(d)). The
training default follows SEEDS.md's reading of the paper, delta = eps * sign(d): one outer step of
size eps from x itself (no random start), so that with one Krylov iteration it is exactly FGSM;
``--steps`` and ``--step-size`` make it iterative. Crafted in eval mode; the update is CE on the
examples (as PGD-AT). Cost per outer step: about 2m + 1 gradient evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...attacks.krylov import SOLVERS, KrylovConfig, so_krylov
from ...errors import DsaraError
from ..losses import AdvParams, Terms, _clean_aux, _pick_aux, _with_aux, crafting
from .base import Method


@dataclass(frozen=True)
class SOATOptions:
    iters: int = 5  # m: Krylov iterations (Hessian-vector products) per outer step [recon]
    solver: str = "cg"  # cg | minres | gmres [recon; the journal version uses GMRES]
    damping: float = 0.0  # lambda in (H + lambda I) d = g [recon]

    def validate(self) -> None:
        if self.solver not in SOLVERS or self.iters < 1 or self.damping < 0:
            raise DsaraError(f"so-at: need iters >= 1, damping >= 0 and a solver of "
                             f"{', '.join(SOLVERS)}; got {self}")


def krylov_config(p: AdvParams) -> KrylovConfig:
    """The attack of `p`: its steps and step size; start "zero" (the default: from x itself) or
    "uniform" (in the eps-ball)."""
    if p.start not in ("zero", "uniform"):
        raise DsaraError(f"so-at starts at x (attack_start = zero) or uniformly in the eps-ball "
                         f"(uniform), not {p.start!r}")
    o = p.options or SOATOptions()
    return KrylovConfig(iters=o.iters, solver=o.solver, damping=o.damping, steps=p.steps,
                        step_size=p.step_size, random_start=p.start == "uniform").validate()


def so_at(model, x, y, p: AdvParams, generator=None) -> tuple[torch.Tensor, Terms]:
    """CE on second-order (Krylov) adversarial examples [recon]."""
    aux_clean = _clean_aux(model, x, p)
    with crafting(model, p.craft_mode):  # drop-path off, the method's mode (eval)
        x_adv = so_krylov(model, x, y, p.eps, krylov_config(p), generator=generator)
    logits, aux = model(x_adv, return_aux=True)
    ce = F.cross_entropy(logits.float(), y)
    return _with_aux(ce, {"ce_adv": ce.detach()}, _pick_aux(p, aux_clean, aux), y, p.aux_weight)


RECORDS = (
    # second-order (Krylov) examples, model in eval mode [recon]
    Method("so-at", so_at, 1.0, 1, "eval", "zero", options=SOATOptions),
)
